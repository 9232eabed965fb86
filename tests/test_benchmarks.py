"""The benchmark scripts run end to end in their quickest mode (no timing is asserted).

Speed targets live in ``benchmarks/`` and ``make bench``; here we only check
that every area produces its metrics and that the Markdown report renders.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Any:
    sys.path.insert(0, str(BENCH_DIR))
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module("run")
    finally:
        sys.path.remove(str(BENCH_DIR))
        torch.set_num_threads(threads)


def test_smoke_run_has_every_metric(bench: Any, tmp_path: Path) -> None:
    out, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    payload = bench.main(
        [
            "--smoke",
            "--threads",  # one thread: on a busy machine two threads wait on each other
            "1",
            "--models",
            "demo",
            "--areas",
            "forward,generation,batch,memory",
            "--out",
            str(out),
            "--md",
            str(md),
        ]
    )
    ids = {m["id"] for m in payload["metrics"]}
    expected = {
        "forward.hooked_vs_plain.demo",
        "var.prefill_vs_hooked.demo",
        "var.generation_tokens_per_s.demo",
        "var.decode_tokens_per_s.demo",
        "batch.items_per_s_b4_vs_b1.demo",
        "memory.peak_n1.demo",
        "memory.peak_n2.demo",
        "memory.flat.demo",
        "memory.extra_per_image.demo",
        "memory.pattern_cache_per_image.demo",
    }
    assert expected <= ids
    by_id = {m["id"]: m for m in payload["metrics"]}
    # VAR did something.
    assert by_id["var.prefill_vs_hooked.demo"]["details"]["rows_changed"] > 0
    assert by_id["forward.hooked_vs_plain.demo"]["details"]["max_logit_diff"] < 1e-4
    assert payload["machine"]["torch"]
    text = md.read_text()
    assert "| metric | model | measured | target | result |" in text
    assert text.count("`demo`") >= len(expected)


def test_parallel_metric_from_runs(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two-process metric is assembled from timed runs (the runs themselves are slow)."""
    calls: list[list[str]] = []

    def fake_run(command: list[str], env: dict[str, str], run_dir: Path) -> dict[str, Any]:
        calls.append(command)
        two = "--nproc-per-node" in command
        return {"seconds": 10.0, "records": 8, "records_per_s_steady": 2.0 if two else 1.0}

    monkeypatch.setattr(bench.area_parallel, "_run_eval", fake_run)
    device, dtype = bench.common.resolve("cpu", None)
    (metric,) = bench.area_parallel.bench_parallel(
        device=device, dtype=dtype, n_items=4, workdir=tmp_path, repeats=1
    )
    assert metric.id == "parallel.items_per_s_2proc_vs_1.demo"
    assert metric.value == pytest.approx(2.0)
    assert any("--nproc-per-node" in c for c in calls)
    assert all("eval" in c and "--dims" in c for c in calls)


def test_planted_sinks_in_the_7b_shaped_builder(bench: Any, tmp_path: Path) -> None:
    """The projector edit gives a few visual tokens phi >= 20 at every layer input."""
    from analysis.loading import load_model
    from analysis.sinks import find_sinks
    from analysis.tokens import build_inputs

    common = bench.common
    shape = {"d_model": 1024, "n_heads": 8, "d_mlp": 64}
    path = common.build_7b_shaped(
        tmp_path / "m", n_layers=2, image=common.demo_image(), shape=shape
    )
    model = load_model(path, device="cpu")
    inputs = build_inputs(model, common.demo_image(), "is there a red object ?")
    counts = find_sinks(model, inputs, dims=[0]).counts()["visual"][0]
    assert (counts > 0).all()
    assert (counts < 0.1 * int(inputs.visual.sum())).all()


@pytest.mark.parametrize("script", ["run", "attention"])
def test_importing_a_benchmark_changes_no_process_state(script: str) -> None:
    """sys.path and os.environ are set by the scripts' main(), not on import."""
    probe = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(BENCH_DIR)!r})\n"
        "path, env = list(sys.path), dict(os.environ)\n"
        f"import {script}\n"
        "assert sys.path == path, set(sys.path) ^ set(path)\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENIZERS_PARALLELISM",)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
