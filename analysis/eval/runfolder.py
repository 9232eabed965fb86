"""The run folder of an evaluation: manifest, append-only parts, repair and merge.

* ``manifest.json``: the configuration (checked on restart: a different
  configuration is refused instead of mixing results), the sink dims used,
  model, package versions, git commit, one entry per session;
* ``part-{rank}.jsonl``: append-only per-item records (:class:`ItemRecord`)
  keyed by (item id, condition); a restarted run skips done keys, and a line
  cut short by a kill is dropped and overwritten (:func:`repair_part`);
* ``records.jsonl`` and ``summary.json``: written by :func:`merge_run` from the
  parts alone, deduplicated and sorted by item; written atomically
  (:func:`analysis.fsio.write_atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import CI_LEVEL, N_BOOT
from analysis.eval.errors import EvalError
from analysis.eval.records import (
    FORMAT_VERSION,
    POPE_FORMAT_VERSION,
    ItemRecord,
    record_key,
)
from analysis.fsio import write_atomic
from analysis.results import ResultMixin, provenance

if TYPE_CHECKING:
    from analysis.loading import LoadedModel

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
LOCK = "vsink.lock"
# Base64 images of a benchmark file are decoded into this folder of the run.
DECODED = "images"


# --------------------------------------------------------------------------- parts


def part_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"part-{rank}.jsonl"


def read_part(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of one part and the byte length of its complete lines.

    Records are written one whole line per ``write``; a last line without its
    newline was cut by a kill and is dropped. A complete line that is not JSON
    means the file was edited or corrupted: refused.
    """
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise EvalError(f"{path}:{number} is not a JSON record; the part is corrupt.") from None
    return records, end


def repair_part(path: Path) -> int:
    """Cut a truncated last line so appends start on a fresh line; returns bytes dropped."""
    if not path.exists():
        return 0
    _, end = read_part(path)
    dropped = path.stat().st_size - end
    if dropped:
        with path.open("r+b") as handle:
            handle.truncate(end)
    return dropped


def load_item_records(run_dir: str | Path) -> list[ItemRecord]:
    """All records of a run from its parts, typed: deduplicated (first wins), sorted by
    item, then condition in the manifest's order. A record that breaks the schema is
    refused with its part and line."""
    run = Path(run_dir)
    manifest = read_manifest(run)
    order = {c["name"]: i for i, c in enumerate(manifest["conditions"])}
    seen: dict[tuple[str, str], ItemRecord] = {}
    for path in sorted(run.glob("part-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        for number, data in enumerate(read_part(path)[0], start=1):
            try:
                record = ItemRecord.from_dict(data)
            except EvalError as err:
                raise EvalError(f"{path} record {number}: {err}") from None
            seen.setdefault(record.key, record)
    return sorted(seen.values(), key=lambda r: (int(r.index), order.get(r.condition, len(order))))


def load_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """:func:`load_item_records` as the JSON objects the parts hold."""
    return [record.to_dict() for record in load_item_records(run_dir)]


def _count_records(run: Path, fallback: int) -> int:
    """Records present in a run folder (``fallback`` when the parts cannot be read)."""
    try:
        return len(load_item_records(run))
    except (OSError, ValueError):
        return fallback


# --------------------------------------------------------------------------- manifest


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise EvalError(f"{Path(run_dir)} is not an evaluation run (no {MANIFEST}).")
    manifest = json.loads(path.read_text())
    version = manifest.get("config", {}).get("format", POPE_FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EvalError(
            f"{path}: run format {version!r} is newer than this vsink reads "
            f"(<= {FORMAT_VERSION}); update vsink."
        )
    return manifest


def _config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """The leaves that differ, e.g. ``conditions[1].var.p: 0.6 -> 0.3``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for k in sorted(set(old) | set(new))
            for line in _config_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            line
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for line in _config_diff(a, b, f"{path}[{i}]")
        ]
    if old == new:
        return []
    return [f"{path}: {json.dumps(old)[:120]} -> {json.dumps(new)[:120]}"]


def _open_manifest(run: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The run's manifest: new when the folder is new, checked against ``identity`` otherwise."""
    path = run / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("config") != identity:
            changes = _config_diff(manifest.get("config", {}), identity)
            raise EvalError(
                f"{run} holds a run with a different configuration; refusing to mix results. "
                f"Use another --out, or the original settings. Differences: {'; '.join(changes)}"
            )
        return manifest
    if run.exists() and any(
        not p.name.startswith((LOCK, "." + LOCK)) and p.name != DECODED for p in run.iterdir()
    ):
        raise EvalError(f"{run} exists, is not empty and has no {MANIFEST}: choose another --out.")
    run.mkdir(parents=True, exist_ok=True)
    return {"kind": "vsink-eval", "config": identity}


def _model_identity(model: LoadedModel) -> dict[str, Any]:
    config = model.config
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return {
        "name_or_path": model.name_or_path,
        "revision": model.revision,
        # The hub commit the files were resolved to (None for local folders).
        "commit": getattr(config, "_commit_hash", None),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def _start_session(
    run: Path,
    identity: dict[str, Any],
    *,
    model: LoadedModel,
    find_dims: Callable[[], dict[str, Any] | None],
    dataset: dict[str, Any],
    session: dict[str, Any],
    summary_settings: dict[str, Any],
) -> None:
    """Create or check the manifest (rank 0 only) and record this session in it."""
    manifest = _open_manifest(run, identity)
    origin = provenance()
    if "dims" not in manifest:  # a new run: decide the sink dims once, for every session
        manifest.update(
            dims=find_dims(),
            conditions=identity["conditions"],
            model=model.describe() | _model_identity(model),
            dataset=dict(dataset, fingerprint=identity["dataset_fingerprint"]),
            provenance=origin,
        )
    manifest["summary_settings"] = summary_settings  # not identity: the latest wins
    manifest.setdefault("sessions", []).append(
        {
            "started": origin["created"],
            "device": str(model.device),
            "git_commit": origin["git_commit"],
            **session,
        }
    )
    # allow_nan=False: NaN is not JSON; validation keeps it out, this keeps it out for sure.
    write_atomic(run / MANIFEST, json.dumps(manifest, indent=2, allow_nan=False))


def expected_items(manifest: dict[str, Any], present: int) -> int:
    """How many items the run's sessions asked for: the largest ``limit`` (all items when
    a session had none), at most the dataset's size; ``present`` for an old manifest."""
    total = manifest.get("config", {}).get("n_dataset_items")
    sessions = manifest.get("sessions") or []
    if total is None or not sessions:
        return present
    limits = [s.get("limit") for s in sessions]
    return int(total) if None in limits else min(int(total), max(int(x) for x in limits))


# --------------------------------------------------------------------------- merge


@dataclass
class EvalResult(ResultMixin):
    """A finished (or merged) run: per-item records, summary and the manifest."""

    run_dir: Path
    records: list[dict[str, Any]]
    summary_data: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    kind = "evaluation"
    json_fields = ("run_dir",)

    def summary(self) -> dict[str, Any]:
        return self.summary_data

    def accuracy(self, condition: str = "baseline", scoring: str = "logprob") -> float:
        return float(self.summary_data["conditions"][condition][scoring]["accuracy"]["value"])

    def item_records(self) -> list[ItemRecord]:
        """The records, typed."""
        return [ItemRecord.from_dict(r) for r in self.records]


def merge_run(
    run_dir: str | os.PathLike[str], *, n_boot: int | None = None, level: float | None = None
) -> EvalResult:
    """Merge the parts of a run into ``records.jsonl`` and ``summary.json`` (idempotent).

    ``n_boot`` and ``level`` default to those the run's latest session stored.
    """
    # Imported here: the summary reads this module's manifest helpers.
    from analysis.eval.summary import summarize

    run = Path(run_dir).expanduser()
    manifest = read_manifest(run)
    typed = load_item_records(run)
    if not typed:
        raise EvalError(f"{run} has no records yet.")
    records = [record.to_dict() for record in typed]
    settings = manifest.get("summary_settings", {})
    summary = summarize(
        typed,
        manifest,
        n_boot=int(n_boot if n_boot is not None else settings.get("n_boot", N_BOOT)),
        level=float(level if level is not None else settings.get("level", CI_LEVEL)),
    )
    write_atomic(run / RECORDS, "".join(json.dumps(r) + "\n" for r in records))
    write_atomic(run / SUMMARY, json.dumps(summary, indent=2))
    return EvalResult(run_dir=run, records=records, summary_data=summary, config=manifest)


__all__ = [
    "DECODED",
    "LOCK",
    "MANIFEST",
    "RECORDS",
    "SUMMARY",
    "EvalResult",
    "expected_items",
    "load_item_records",
    "load_records",
    "merge_run",
    "part_path",
    "read_manifest",
    "read_part",
    "record_key",
    "repair_part",
]
