"""Benchmark area ``memory``: peak memory of ``score_heads`` + ``find_sinks`` over N images.

Each N runs in a fresh process (``run.py memory-child``), so one N's peak is not
another's; :func:`memory_metrics` turns the rows into flatness and extra memory
per image against the full ``[layer, head, query, key]`` pattern cache.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import torch
from common import BenchModel, Metric, log

MEMORY_NS = (1, 8, 32)
# Targets from the issue (#9).
MEMORY_FLAT_MAX = 1.10  # peak(N=32) / peak(N=1)
MEMORY_PER_IMAGE_MAX_FRACTION = 0.10  # extra bytes per image / full pattern cache per image
#: The script whose ``memory-child`` command measures one N.
RUN_SCRIPT = Path(__file__).resolve().with_name("run.py")


def _rss_bytes(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in bytes."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS, so the peak excludes model loading (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_child(
    n_images: int, device: torch.device, dtype: torch.dtype, bm: BenchModel | None = None
) -> dict[str, Any]:
    """Peak memory of score_heads + find_sinks over ``n_images`` images (one process per N).

    ``bm`` reuses a loaded demo model (smoke runs only: the numbers then mean little).
    """
    import resource

    from analysis.heads import score_heads
    from analysis.sinks import find_sinks
    from analysis.tokens import build_inputs

    bm = bm or common.load_demo(device, dtype)
    loaded = bm.loaded
    questions = common.demo_questions()
    batches = [
        build_inputs(loaded, common.demo_image(q["image"]), q["text"])
        for q in (questions[i % len(questions)] for i in range(n_images))
    ]
    n_pos = max(int(b.input_ids.shape[1]) for b in batches)
    # Warm up allocator and lazy imports on one image so N = 1 is not charged for them.
    find_sinks(loaded, batches[0], dims=bm.dims)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    base_rss = _rss_bytes("VmRSS")
    reset = _reset_peak_rss()

    heads = score_heads(loaded, batches, dims=bm.dims, show_progress=False)
    sinks = [find_sinks(loaded, batch, dims=bm.dims) for batch in batches]

    out: dict[str, Any] = {
        "n_images": n_images,
        "n_pos": n_pos,
        "n_layers": loaded.n_layers,
        "n_heads": loaded.n_heads,
        "kept_results_bytes": sum(t.numel() * t.element_size() for t in (heads.s, heads.r))
        + sum(s.phi.numel() * s.phi.element_size() for s in sinks),
        "rss_before_bytes": base_rss,
        "peak_rss_bytes": _rss_bytes("VmHWM") if reset else None,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_reset": reset,
    }
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_base_bytes"] = base
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


# glibc raises its mmap threshold each time a large mmapped block is freed, so the
# transient activations of later forwards land on the heap, where the small results
# kept per image pin them: RSS then grows with N although the data held does not.
# Pinning the threshold (glibc's own default start value) turns that off, which
# separates what the analysis holds from what the allocator keeps.
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_memory_children(
    ns: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    extra_env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    env = {**os.environ, **(extra_env or {})}
    for n in ns:
        log(f"memory: fresh process for N = {n} {extra_env or ''}")
        command = [
            sys.executable,
            str(RUN_SCRIPT),
            "memory-child",
            "--n",
            str(n),
            "--device",
            str(device),
            "--dtype",
            str(dtype).removeprefix("torch."),
            "--threads",
            str(torch.get_num_threads()),
        ]
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"memory child N={n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def memory_metrics(
    rows: list[dict[str, Any]], device: torch.device, *, variant: str = ""
) -> list[Metric]:
    """Peak per N, flatness and extra memory per image vs the full pattern cache.

    ``variant`` suffixes the metric ids (``fixed_mmap``: glibc threshold pinned).
    """
    mib = 2**20
    rows = sorted(rows, key=lambda r: r["n_images"])
    suffix = f"_{variant}" if variant else ""
    label = " (glibc mmap threshold pinned)" if variant else ""
    if device.type == "cuda":
        peaks = {r["n_images"]: r["cuda_peak_bytes"] for r in rows}
        analysis = {r["n_images"]: r["cuda_peak_bytes"] - r["cuda_base_bytes"] for r in rows}
        kind = "CUDA max_memory_allocated"
    else:
        peaks = {r["n_images"]: r["peak_rss_bytes"] or r["ru_maxrss_bytes"] for r in rows}
        analysis = {r["n_images"]: peaks[r["n_images"]] - r["rss_before_bytes"] for r in rows}
        kind = "process peak RSS (VmHWM, reset after model load and input building)"
    first, last = rows[0], rows[-1]
    n_lo, n_hi = first["n_images"], last["n_images"]
    # What capture(patterns=True) keeps: float32 [layer, head, query, key] per image.
    cache = last["n_layers"] * last["n_heads"] * last["n_pos"] ** 2 * 4
    cache_7b = 32 * 32 * (576 + common.N_TEXT_7B) ** 2 * 2  # LLaVA-1.5-7B, fp16
    span = max(n_hi - n_lo, 1)
    per_image = (peaks[n_hi] - peaks[n_lo]) / span
    per_image_analysis = (analysis[n_hi] - analysis[n_lo]) / span
    inputs_per_image = (last["rss_before_bytes"] - first["rss_before_bytes"]) / span
    details = {
        "measure": kind + label,
        "allocator_env": FIXED_MMAP_ENV if variant else {},
        "peak_mib": {str(n): round(v / mib, 1) for n, v in peaks.items()},
        "analysis_increment_mib": {str(n): round(v / mib, 1) for n, v in analysis.items()},
        "extra_per_image_analysis_only_mib": round(per_image_analysis / mib, 3),
        "inputs_held_per_image_mib": round(inputs_per_image / mib, 3),
        "full_pattern_cache_per_image_mib": round(cache / mib, 1),
        "full_pattern_cache_per_image_llava15_7b_fp16_mib": round(cache_7b / mib, 1),
        "kept_results_per_image_mib": round(last["kept_results_bytes"] / n_hi / mib, 3),
        "rows": rows,
    }
    out = [
        Metric(
            id=f"memory.peak_n{n}{suffix}.demo",
            area="memory",
            model="demo",
            name=f"score_heads + find_sinks over N = {n} images: peak memory{label}",
            value=round(peaks[n] / mib, 1),
            unit="MiB",
            details={"analysis_increment_mib": round(analysis[n] / mib, 1)},
        )
        for n in sorted(peaks)
    ]
    out += [
        Metric(
            id=f"memory.flat{suffix}.demo",
            area="memory",
            model="demo",
            name=f"peak memory N = {n_hi} / N = {n_lo}{label}",
            value=peaks[n_hi] / peaks[n_lo],
            unit="x",
            op="<=",
            threshold=MEMORY_FLAT_MAX,
            details=details,
        ),
        Metric(
            id=f"memory.extra_per_image{suffix}.demo",
            area="memory",
            model="demo",
            name=f"extra peak memory per image (slope N = {n_lo} .. {n_hi}, inputs included){label}",
            value=round(per_image / mib, 3),
            unit="MiB",
            op="<=",
            threshold=round(MEMORY_PER_IMAGE_MAX_FRACTION * cache / mib, 3),
            details=details,
        ),
    ]
    if not variant:
        out.append(
            Metric(
                id="memory.pattern_cache_per_image.demo",
                area="memory",
                model="demo",
                name="full [layer, head, query, key] pattern cache per image (float32)",
                value=round(cache / mib, 1),
                unit="MiB",
                details={"llava15_7b_fp16_mib": round(cache_7b / mib, 1)},
            )
        )
    return out
