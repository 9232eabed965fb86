"""Canary: the newest release of every dependency, then the invariant tests.

``make canary`` (not part of ``make test``). It builds a throw-away venv, installs
the project's dependencies with every version range dropped (the newest release
of each on the registry; torch stays on its CPU build 2.13.0, as a newer torch
would pull CUDA), runs the tests marked ``invariant`` (KV-cache generation ==
an uncached loop, bridge == HF, edits take effect, on every family), and
prints the versions it tried. An upstream release that breaks the toolkit shows
here in minutes, with the versions named, before a user or the lock meets it.

Usage: python .ci/canary.py --uv .venv/bin/uv [uv install options, e.g. --find-links DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0+cpu"
# The packages whose releases decide whether generation and hooks work.
WATCHED = (
    "torch",
    "transformers",
    "transformer-lens",
    "tokenizers",
    "huggingface-hub",
    "accelerate",
)


def unpinned_requirements() -> list[str]:
    """Runtime and dev requirements of pyproject.toml with their version ranges dropped."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    names = [re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0] for req in requirements]
    return [TORCH if name == "torch" else name for name in names]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default="uv", help="the uv executable")
    parser.add_argument("--report", type=Path, help="also write the outcome as JSON here")
    args, uv_options = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="vsink-canary-") as tmp:
        venv = Path(tmp) / "venv"
        python = str(venv / "bin" / "python")
        if run([args.uv, "venv", "-q", "--python", sys.executable, str(venv)]).returncode:
            return 1
        install = [args.uv, "pip", "install", "-q", "--python", python, "--upgrade", *uv_options]
        if run([*install, *unpinned_requirements()]).returncode:
            print("canary: the newest releases do not install together", file=sys.stderr)
            return 1
        if run(
            [args.uv, "pip", "install", "-q", "--python", python, "--no-deps", "-e", str(ROOT)]
        ).returncode:
            return 1
        freeze = subprocess.run(
            [args.uv, "pip", "freeze", "--python", python],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        versions = {}
        for line in freeze.splitlines():
            name, _, version = line.partition("==")
            if name.lower() in WATCHED:
                versions[name.lower()] = version
        tried = ", ".join(f"{n} {versions.get(n, '?')}" for n in WATCHED)
        print(f"canary: versions tried: {tried}", flush=True)
        tests = run(
            [python, "-m", "pytest", "-q", "-m", "invariant", "-p", "no:cacheprovider"],
            cwd=ROOT,
            env={"HF_HUB_OFFLINE": "1", "PATH": str(venv / "bin") + ":/usr/bin:/bin"},
        )
    ok = tests.returncode == 0
    verdict = "passed" if ok else "FAILED"
    print(f"canary: invariant tests {verdict} with {tried}")
    if not ok:
        print(
            "canary: keep requirements.lock as it is; cap the failing package in "
            "pyproject.toml or add a compatibility fix (analysis/compat.py), then `make lock`.",
            file=sys.stderr,
        )
    if args.report:
        args.report.write_text(json.dumps({"passed": ok, "versions": versions}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
