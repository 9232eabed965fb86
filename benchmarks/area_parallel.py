"""Benchmark area ``parallel``: ``vsink eval`` on a dataset shard, two processes vs one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch
from common import Metric, log


def _count_records(run_dir: Path) -> int:
    total = 0
    for part in run_dir.glob("part-*.jsonl"):
        with contextlib.suppress(OSError):
            total += part.read_bytes().count(b"\n")
    return total


def _run_eval(command: list[str], env: dict[str, str], run_dir: Path) -> dict[str, Any]:
    """Run ``vsink eval`` and time it: end to end, and from its first record to its last.

    The runner appends (and fsyncs) records as it goes, so polling the part files
    gives the steady throughput without the process start and model load.
    """
    stamps: list[tuple[float, int]] = []
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        while proc.poll() is None:
            count = _count_records(run_dir)
            if count and (not stamps or count != stamps[-1][1]):
                stamps.append((time.perf_counter() - start, count))
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"vsink eval failed ({' '.join(command)}):\n{tail}")
    final = _count_records(run_dir)
    if not stamps or stamps[-1][1] != final:
        stamps.append((seconds, final))
    (t_first, c_first), (t_last, c_last) = stamps[0], stamps[-1]
    steady = (c_last - c_first) / (t_last - t_first) if t_last > t_first else float("nan")
    return {"seconds": seconds, "records": final, "records_per_s_steady": steady}


def bench_parallel(
    *, device: torch.device, dtype: torch.dtype, n_items: int, workdir: Path, repeats: int
) -> list[Metric]:
    """``vsink eval`` on the demo questions: one process vs two (torchrun), same machine."""
    conditions = ["baseline", "var"]
    base = [
        "--questions",
        str(common.DEMO_DIR / "questions.jsonl"),
        "--images",
        str(common.DEMO_DIR / "images"),
        "--conditions",
        ",".join(conditions),
        "--dims",  # the registry/ground-truth dims: no discovery pass in the timing
        ",".join(str(d) for d in common.demo_dims()),
        "--limit",
        str(n_items),
        "--batch-size",
        "1",
        "--no-progress",
        "--device",
        str(device),
        "--dtype",
        str(dtype).removeprefix("torch."),
    ]
    vsink = [sys.executable, "-m", "analysis.cli", "eval"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    # The cores this process may use, not --threads: both layouts get the same hardware.
    threads = common.usable_cores()
    # one: a process using every core as threads; two: two processes (torchrun), the
    # cores split between them, so both layouts get the same hardware; one_1t: one
    # process, one thread, the unit for per-process scaling.
    layouts = {"one": threads, "two": max(threads // 2, 1), "one_1t": 1}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    for repeat in range(repeats):
        order = list(layouts) if repeat % 2 == 0 else list(reversed(layouts))
        for name in order:
            run_dir = workdir / f"eval_{name}_{repeat}"
            shutil.rmtree(run_dir, ignore_errors=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(layouts[name]))
            if name == "two":
                command = [*torchrun, "--nproc-per-node", "2", "-m", "analysis.cli", "eval"]
                command += [*base, "--out", str(run_dir)]
            else:
                command = [*vsink, *base, "--out", str(run_dir)]
            log(f"parallel: {name}, {n_items} items, repeat {repeat + 1}/{repeats}")
            runs[name].append(_run_eval(command, env, run_dir))
            if runs[name][-1]["records"] != n_items * len(conditions):
                raise RuntimeError(
                    f"vsink eval ({name}) wrote {runs[name][-1]['records']} records."
                )
    steady = {n: [r["records_per_s_steady"] for r in rs] for n, rs in runs.items()}
    seconds = {n: [r["seconds"] for r in rs] for n, rs in runs.items()}
    per_item = len(conditions)
    return [
        Metric(
            id="parallel.items_per_s_2proc_vs_1.demo",
            area="parallel",
            model="demo",
            name="vsink eval items/s, 2 processes (torchrun) / 1 process, steady state",
            value=common.paired_ratio(steady, "two", "one"),
            unit="x",
            details={
                "items": n_items,
                "conditions": ",".join(conditions),
                "items_per_s_steady": {n: common.median(v) / per_item for n, v in steady.items()},
                "items_per_s_end_to_end": {
                    n: n_items / common.median(v) for n, v in seconds.items()
                },
                "ratio_end_to_end": common.paired_ratio(seconds, "one", "two"),
                "ratio_two_vs_one_single_thread": common.paired_ratio(steady, "two", "one_1t"),
                "ratio_threads_vs_single_thread": common.paired_ratio(steady, "one", "one_1t"),
                "threads_per_layout": layouts,
                "runs": runs,
                "threads_total": threads,
            },
        )
    ]
