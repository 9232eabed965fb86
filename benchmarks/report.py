"""Render ``benchmarks/results.json`` as ``benchmarks/RESULTS.md``.

    python benchmarks/report.py [results.json] [-o RESULTS.md]

The Markdown is regenerated on every ``make bench``, so everything in it,
including the explanations of missed targets, comes from here and the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Why a target can be missed, shown under the table for each metric that misses.
# Keyed by the metric id up to the model suffix.
MISS_NOTES: dict[str, str] = {
    "forward.hooked_vs_plain": (
        "The bridge (TransformerLens 4.x, not this package) re-implements attention "
        "around `hook_pattern` and computes every RMSNorm twice (once for its "
        "`hook_scale`/`hook_normalized` hook points, once in HF's own norm), plus a "
        "Python-level HookPoint call per hook point. That is a fixed cost per layer "
        "of memory-bound elementwise work: invisible next to a 7B-shaped layer's "
        "matmuls, visible on a model whose layers do almost no matmul work (the demo "
        "model's MLP is 16 wide). Nothing in `analysis/` runs during a hook-free "
        "forward, so the fix would have to be in TransformerLens."
    ),
    "var.prefill_vs_hooked": (
        "VAR's per-layer work is O(batch x head x query x key) elementwise plus a "
        "per-call set-up (masks, phi on the layer input). On a model whose layers "
        "are cheap the fixed set-up dominates; see the profile notes in the text."
    ),
    "var.generation_tokens_per_s": (
        "Each decoding step runs VAR's pattern hook on every VAR layer; the hook's "
        "work per step is tiny but is a fixed number of small tensor ops, which a "
        "model with near-free decoding steps (the demo model) cannot hide."
    ),
    "var.decode_tokens_per_s": (
        "Decoding steps of the demo model take about a millisecond per layer, so the "
        "fixed Python and dispatch cost of VAR's per-step hook is a large fraction "
        "of them. On a 7B-shaped layer a decoding step reads ~0.8 GB of weights and "
        "the same hook is a few percent or less."
    ),
    "memory.flat": "Peak memory grew with the number of images; see the per-N peaks.",
    "memory.extra_per_image": (
        "Extra memory per image includes the inputs the caller keeps (pixel values, "
        "token layouts) and the per-image results; compare the analysis-only slope."
    ),
}


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}x"
    if isinstance(value, float):
        return f"{value:,.3f} {unit}" if abs(value) < 10 else f"{value:,.1f} {unit}"
    return f"{value} {unit}"


def _target(metric: dict[str, Any]) -> str:
    if metric.get("op") is None:
        return "report"
    return f"{metric['op']} {_fmt(metric['threshold'], metric['unit'])}"


def _verdict(metric: dict[str, Any]) -> str:
    passed = metric.get("passed")
    return "-" if passed is None else ("pass" if passed else "**MISS**")


def _machine_rows(machine: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    keys = [
        ("CPU", machine.get("cpu")),
        ("cores (os / usable)", f"{machine.get('cpu_count')} / {machine.get('cpus_usable')}"),
        ("torch threads", machine.get("torch_threads")),
        ("RAM (GiB)", machine.get("ram_gb")),
        ("GPU", machine.get("gpu") or "none"),
        ("device / dtype", f"{settings.get('device')} / {settings.get('dtype')}"),
        ("torch", machine.get("torch")),
        ("transformers", machine.get("transformers")),
        ("transformer-lens", machine.get("transformer-lens")),
        ("python", machine.get("python")),
        ("platform", machine.get("platform")),
        ("git commit", machine.get("git_commit")),
        ("date", machine.get("date")),
    ]
    return ["| item | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in keys]]


def _details_lines(metrics: list[dict[str, Any]]) -> list[str]:
    """The supporting numbers a reader needs to trust each ratio."""
    lines: list[str] = []
    for metric in metrics:
        d = metric.get("details", {})
        mid, model = metric["id"], metric["model"]
        if mid.startswith("var.prefill_vs_hooked"):
            secs = d.get("median_seconds", {})
            lines.append(
                f"- `{model}` forward medians (s): plain {secs.get('plain', 0):.4f}, "
                f"hooked {secs.get('hooked', 0):.4f}, VAR {secs.get('var', 0):.4f}, "
                f"naive VAR {secs.get('naive', 0):.4f}; VAR changed "
                f"{d.get('rows_changed')} of {d.get('prefill_rows')} eligible rows in layers "
                f"{d.get('var_layers')} (visual sinks per layer {d.get('visual_sinks_per_layer')}, "
                f"max logit change {d.get('max_logit_change', 0):.3g})."
            )
        elif mid.startswith("var.naive_vs_vectorised"):
            lines.append(
                f"- `{model}` naive loop vs vectorised VAR: same {d.get('rows_changed')} rows "
                f"changed, max logit difference {d.get('max_logit_diff_vs_vectorised', 0):.2g}; "
                f"naive VAR / hooked forward {d.get('naive_overhead_vs_hooked', 0):.3f}x."
            )
        elif mid.startswith("var.generation_tokens_per_s"):
            tps, dps = d.get("tokens_per_s", {}), d.get("decode_tokens_per_s", {})
            lines.append(
                f"- `{model}` generation, {d.get('new_tokens')} new tokens: "
                f"{tps.get('base', 0):.2f} -> {tps.get('var', 0):.2f} tokens/s end to end, "
                f"decoding {dps.get('base', 0):.2f} -> {dps.get('var', 0):.2f} tokens/s; "
                f"VAR changed {d.get('rows_changed_prefill')} prefill and "
                f"{d.get('rows_changed_decode')} decoding rows."
            )
        elif mid == "memory.extra_per_image.demo":
            lines.append(
                f"- memory ({d.get('measure')}): peak MiB by N {d.get('peak_mib')}; "
                f"increment over the pre-analysis RSS {d.get('analysis_increment_mib')}; "
                f"analysis-only slope {d.get('extra_per_image_analysis_only_mib')} MiB/image; "
                f"results kept per image {d.get('kept_results_per_image_mib')} MiB; full pattern "
                f"cache per image {d.get('full_pattern_cache_per_image_mib')} MiB here, "
                f"{d.get('full_pattern_cache_per_image_llava15_7b_fp16_mib')} MiB for "
                "LLaVA-1.5-7B in fp16."
            )
        elif mid.startswith("batch."):
            lines.append(
                f"- `{model}` answer scoring of {d.get('items')} items: items/s "
                + ", ".join(f"{k} {v:.2f}" for k, v in d.get("items_per_s", {}).items())
                + f" (max log-prob difference batched vs single {d.get('max_logprob_diff_b1_vs_batched', 0):.2g})."
            )
        elif mid.startswith("parallel."):
            steady = d.get("items_per_s_steady", {})
            e2e = d.get("items_per_s_end_to_end", {})
            lines.append(
                f"- `vsink eval` on {d.get('items')} demo items ({d.get('conditions')}), "
                f"{d.get('threads_total')} threads in all (split between the processes): "
                f"steady items/s one process {steady.get('one', 0):.2f}, two "
                f"{steady.get('two', 0):.2f}; end to end with process start and model load "
                f"{e2e.get('one', 0):.2f} vs {e2e.get('two', 0):.2f} "
                f"({d.get('ratio_end_to_end', 0):.3f}x)."
            )
    return lines


STATIC_NOTES = """\
## How these numbers are made

- Ratios compare variants run in one process, interleaved (ABBA order) after a
  warm-up; each ratio is the median over repeats of the per-repeat ratio, so
  load from other processes on a shared machine hits both sides alike.
- "Plain HF eager forward" is a separately loaded `AutoModelForImageTextToText`
  (eager attention) sharing the bridge's weight tensors; the bridge replaces
  modules inside `loaded.hf_model`, so that object is not plain HF. Its logits
  equal the hooked forward's (checked every run).
- The 7B-shaped model has LLaVA-1.5-7B's layer (d_model 4096, 32 heads, MLP
  11008, 576 visual + ~60 text tokens) with a few layers, a small vocabulary and
  random weights. Random weights have no sinks, so its projector is edited to
  give ~2% of the benchmark image's visual tokens a massive activation in sink
  dim 1415; VAR is then run on every layer (a 7B's default is 29 of 32), and the
  number of rows it changed is reported, so a no-op cannot pass as fast.
- The naive reference applies the same rule with a Python loop over heads and
  query rows (the official code loops over heads), at the same hook point; its
  logits are checked against the vectorised VAR's on every run.
- Generation: `analysis.generation.generate`, greedy, KV cache, EOS disabled so
  both variants make exactly 32 tokens; "decoding" excludes the prefill step.
- Memory: one fresh process per N; the peak is the process's VmHWM reset after
  the model is loaded and the inputs built (CUDA: `max_memory_allocated`).
- Batch and parallel ratios have no target in the issue; they are reported.
"""


def render(payload: dict[str, Any]) -> str:
    machine, settings = payload.get("machine", {}), payload.get("settings", {})
    metrics = payload.get("metrics", [])
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python benchmarks/run.py --quick`) from "
        "`benchmarks/results.json`; do not edit by hand (`benchmarks/report.py` renders it).",
        f"Run: `{' '.join(['benchmarks/run.py', *settings.get('argv', [])])}` in "
        f"{payload.get('seconds_total')} s, repeats {settings.get('repeats')} "
        f"(demo model {settings.get('demo_repeats')}), 7B-shaped model with "
        f"{settings.get('layers')} layers.",
        "",
        "## Results",
        "",
        "| metric | model | measured | target | result |",
        "|---|---|---|---|---|",
    ]
    for metric in metrics:
        lines.append(
            f"| {metric['name']} | `{metric['model']}` | {_fmt(metric['value'], metric['unit'])} "
            f"| {_target(metric)} | {_verdict(metric)} |"
        )
    lines += ["", "## Supporting numbers", "", *_details_lines(metrics), ""]
    missed = [m for m in metrics if m.get("passed") is False]
    if missed:
        lines += ["## Missed targets", ""]
        for metric in missed:
            key = metric["id"].rsplit(".", 1)[0]
            note = MISS_NOTES.get(key, "")
            lines.append(f"- **{metric['name']}** (`{metric['model']}`): {note}")
        lines.append("")
    notes = payload.get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    lines += [STATIC_NOTES, "## Machine", "", *_machine_rows(machine, settings), ""]
    models = payload.get("models", {})
    if models:
        lines += [
            "## Models",
            "",
            "| model | layers | d_model | heads | positions (visual + text) |",
        ]
        lines.append("|---|---|---|---|---|")
        for key, d in models.items():
            lines.append(
                f"| `{key}` | {d.get('n_layers')} | {d.get('d_model')} | {d.get('n_heads')} "
                f"| {d.get('n_positions')} ({d.get('n_visual')} + {d.get('n_text')}) |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "results.json")
    parser.add_argument("-o", "--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    payload = json.loads(args.results.read_text())
    args.out.write_text(render(payload))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
