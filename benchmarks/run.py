"""Benchmarks: the cost of analysis and of VAR, measured against plain inference.

    python benchmarks/run.py --quick                  # what `make bench` runs (CPU, minutes)
    python benchmarks/run.py --device cuda --dtype bfloat16 --repeats 10
    python benchmarks/run.py --areas forward,generation --models demo

Areas (``--areas``, default all):

* ``forward``: plain HF eager forward vs the bridge's hooked forward (no hooks),
  and VAR prefill vs hooked (eager vs routed attention, VAR row-sparse, knock-outs
  and peak memory at real widths: benchmarks/attention.py);
* ``generation``: greedy generation with a KV cache, 32 new tokens, with and
  without VAR (tokens/s end to end and decode only);
* ``memory``: peak memory of ``score_heads`` + ``find_sinks`` over N images
  (fresh subprocess per N) vs the full [layer, head, query, key] pattern cache;
* ``batch``: answer scoring items/s at batch size 4 vs 1;
* ``parallel``: ``vsink eval`` on a dataset shard, two processes vs one.

Models (``--models``): ``llava7b_shape`` (LLaVA-1.5-7B's layer shape, d_model
4096, 32 heads, MLP 11008, 576 visual + ~60 text tokens, ``--layers`` layers,
random weights with planted visual sinks) and ``demo`` (the bundled model).

Every ratio compares variants run in the same process, interleaved, and is the
median of per-repeat ratios. Results go to ``--out`` (JSON) and ``--md``
(Markdown, via ``report.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# `common`, `report` and the `area_*` modules sit next to this file: run as a script, its folder is on sys.path;
# imported (tests), the importer puts it there.
import area_parallel
import common
import report
import torch
from area_memory import (
    FIXED_MMAP_ENV,
    MEMORY_NS,
    memory_child,
    memory_metrics,
    run_memory_children,
)
from common import BenchModel, Metric, log

AREAS = ("forward", "generation", "memory", "batch", "parallel")
MODELS = ("llava7b_shape", "demo")
NEW_TOKENS = 32

# Targets from the issue (#9).
HOOKED_VS_PLAIN_MAX = 1.05
VAR_PREFILL_MAX = 1.10
VAR_GENERATION_MIN = 0.90


# =============================================================================== forward


def bench_forward(
    bm: BenchModel, *, repeats: int, device: torch.device, warmup: Sequence[str] | None = None
) -> list[Metric]:
    """Plain HF vs hooked forward; VAR prefill vs hooked."""
    from analysis.capture import forward
    from analysis.var import VarConfig, VarIntervention

    loaded = bm.loaded
    inputs = bm.inputs()
    twin = common.plain_twin(loaded)
    tensors = {k: v.to(device) for k, v in inputs.tensors.items()}
    config = VarConfig(layers=bm.var_layers)
    last: dict[str, Any] = {}

    def plain() -> None:
        with torch.no_grad():
            last["plain"] = twin(**tensors).logits

    def hooked() -> None:
        last["hooked"] = forward(loaded, inputs)

    def var() -> None:
        # Built per call, as run_with_var does: its set-up is part of the cost.
        intervention = VarIntervention(loaded, inputs, dims=bm.dims, config=config)
        last["var"] = forward(loaded, inputs, intervention.fwd_hooks())
        last["var_record"] = intervention.record()

    log(f"{bm.key}: forward x3 variants, {repeats} repeats")
    samples = common.interleaved(
        {"plain": plain, "hooked": hooked, "var": var},
        repeats=repeats,
        device=device,
        warmup=warmup,
    )
    del twin
    record = last["var_record"]
    summary = record.summary()
    # Guard: a no-op VAR must not pass as fast.
    parity = float((last["plain"].float() - last["hooked"].float()).abs().max())
    var_effect = float((last["var"].float() - last["hooked"].float()).abs().max())
    if summary["noop"]:
        raise RuntimeError(f"{bm.key}: VAR changed no row; the timing would be meaningless.")
    seconds = {name: common.median(values) for name, values in samples.wall.items()}
    var_details = {
        "rows_changed": record.total_changed,
        "prefill_rows": sum(record.prefill_rows),
        "visual_sinks_per_layer": record.visual_sinks,
        "mass_moved": round(record.total_mass, 4),
        "var_layers": record.layers,
        "max_logit_change": var_effect,
    }
    common_details = {"median_seconds": seconds, "repeats": repeats, "samples": samples.to_json()}
    return [
        Metric(
            id=f"forward.hooked_vs_plain.{bm.key}",
            area="forward",
            model=bm.key,
            name="hooked forward (no hooks) / plain HF eager forward, time",
            value=samples.ratio("hooked", "plain"),
            unit="x",
            op="<=",
            threshold=HOOKED_VS_PLAIN_MAX,
            details={
                **common_details,
                **samples.checks("hooked", "plain"),
                "max_logit_diff": parity,
            },
        ),
        Metric(
            id=f"var.prefill_vs_hooked.{bm.key}",
            area="forward",
            model=bm.key,
            name="VAR forward (prefill) / hooked forward without VAR, time",
            value=samples.ratio("var", "hooked"),
            unit="x",
            op="<=",
            threshold=VAR_PREFILL_MAX,
            details={**common_details, **samples.checks("var", "hooked"), **var_details},
        ),
    ]


# =============================================================================== generation


def bench_generation(
    bm: BenchModel,
    *,
    repeats: int,
    device: torch.device,
    new_tokens: int = NEW_TOKENS,
    warmup: Sequence[str] | None = None,
) -> list[Metric]:
    """Greedy generation with a KV cache, with and without VAR: tokens/s ratios."""
    from analysis.generation import generate
    from analysis.var import VarConfig, VarIntervention

    inputs = bm.inputs()
    config = VarConfig(layers=bm.var_layers)
    decode: dict[str, list[float]] = {"base": [], "var": []}
    steps: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    records: list[Any] = []

    with common.no_eos(bm.loaded) as view:

        def run(name: str, hooks: Sequence[Any]) -> None:
            with common.StepClock(view.hf_model, device) as clock:
                out = generate(view, inputs, max_new_tokens=new_tokens, fwd_hooks=hooks)
            decode[name].append(clock.decode_seconds)
            steps[name] = clock.steps
            texts[name] = out.texts

        def base() -> None:
            run("base", ())

        def var() -> None:
            intervention = VarIntervention(view, inputs, dims=bm.dims, config=config)
            run("var", intervention.fwd_hooks())
            records.append(intervention.record())

        log(f"{bm.key}: generation ({new_tokens} new tokens) x2 variants, {repeats} repeats")
        samples = common.interleaved(
            {"base": base, "var": var}, repeats=repeats, device=device, warmup=warmup
        )
    # Warm-up calls appended too; keep the timed ones only.
    decode = {name: values[-repeats:] for name, values in decode.items()}
    if steps["base"] != new_tokens or steps["var"] != new_tokens:
        raise RuntimeError(f"{bm.key}: expected {new_tokens} forward steps, got {steps}.")
    record = records[-1]
    if sum(record.decode_changed) == 0:
        raise RuntimeError(f"{bm.key}: VAR changed no decoding row; the timing would be a no-op.")
    end_to_end = {name: new_tokens / common.median(values) for name, values in samples.wall.items()}
    per_token = {name: (new_tokens - 1) / common.median(v) for name, v in decode.items()}
    details = {
        "new_tokens": new_tokens,
        "tokens_per_s": end_to_end,
        "decode_tokens_per_s": per_token,
        "repeats": repeats,
        "samples": samples.to_json(),
        "decode_samples": decode,
        **samples.checks("base", "var"),
        "rows_changed_prefill": sum(record.prefill_changed),
        "rows_changed_decode": sum(record.decode_changed),
        "var_layers": record.layers,
        "same_text": texts["base"] == texts["var"],
    }
    return [
        Metric(
            id=f"var.generation_tokens_per_s.{bm.key}",
            area="generation",
            model=bm.key,
            name=f"VAR / no VAR generation tokens/s ({new_tokens} new tokens, prefill included)",
            value=samples.ratio("base", "var"),
            unit="x",
            op=">=",
            threshold=VAR_GENERATION_MIN,
            details=details,
        ),
        Metric(
            id=f"var.decode_tokens_per_s.{bm.key}",
            area="generation",
            model=bm.key,
            name="VAR / no VAR decoding tokens/s (KV cache, tokens 2..32 only)",
            value=common.paired_ratio(decode, "base", "var"),
            unit="x",
            op=">=",
            threshold=VAR_GENERATION_MIN,
            details=details,
        ),
    ]


# =============================================================================== batch


def bench_batch(
    bm: BenchModel,
    *,
    repeats: int,
    device: torch.device,
    n_items: int,
    batch_size: int = 4,
    warmup: Sequence[str] | None = None,
) -> list[Metric]:
    """Answer scoring (yes/no log-probs) items/s at batch size ``batch_size`` vs 1."""
    from analysis.capture import batched
    from analysis.generation import answer_logprobs
    from analysis.tokens import build_batch

    loaded = bm.loaded
    items = common.demo_questions(n_items)
    scores: dict[int, torch.Tensor] = {}

    def score(size: int) -> None:
        out = []
        for chunk in batched(items, size):
            inputs = build_batch(
                loaded, [(common.demo_image(q["image"]), q["text"]) for q in chunk]
            )
            out.append(answer_logprobs(loaded, inputs, ["yes", "no"])[0])
        scores[size] = torch.cat(out)

    log(f"{bm.key}: answer scoring of {len(items)} items, batch {batch_size} vs 1")
    samples = common.interleaved(
        {"b1": lambda: score(1), f"b{batch_size}": lambda: score(batch_size)},
        repeats=repeats,
        device=device,
        warmup=warmup,
    )
    gap = float((scores[1] - scores[batch_size]).abs().max())
    items_per_s = {name: len(items) / common.median(v) for name, v in samples.wall.items()}
    return [
        Metric(
            id=f"batch.items_per_s_b{batch_size}_vs_b1.{bm.key}",
            area="batch",
            model=bm.key,
            name=f"answer scoring items/s, batch {batch_size} / batch 1",
            value=samples.ratio("b1", f"b{batch_size}"),
            unit="x",
            details={
                "items": len(items),
                "items_per_s": items_per_s,
                "max_logprob_diff_b1_vs_batched": gap,
                "repeats": repeats,
                "samples": samples.to_json(),
                **samples.checks("b1", f"b{batch_size}"),
            },
        )
    ]


# =============================================================================== driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cost of analysis and of VAR vs plain inference.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="run", choices=("run", "memory-child"))
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant")
    parser.add_argument("--quick", action="store_true", help="fewer layers, repeats and items")
    parser.add_argument("--full", action="store_true", help="the default sizes, overrides --quick")
    parser.add_argument("--areas", default=",".join(AREAS), help=f"subset of {','.join(AREAS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    parser.add_argument("--layers", type=int, default=None, help="layers of the 7B-shaped model")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--md", type=Path, default=None, help="also write the Markdown report")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (temp)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--smoke", action="store_true", help=argparse.SUPPRESS
    )  # tests: tiny shapes, in-process memory, no timing value
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    full = args.full or not (args.quick or args.smoke)
    return {
        "repeats": args.repeats or (1 if args.smoke else 5 if full else 3),
        "demo_repeats": args.repeats or (1 if args.smoke else 15 if full else 9),
        "layers": args.layers or (4 if full else 1),
        "memory_ns": (1, 2) if args.smoke else MEMORY_NS,
        "batch_items": 4 if args.smoke else 32 if full else 8,
        "new_tokens": 4 if args.smoke else NEW_TOKENS,
        "parallel_items": 2 if args.smoke else 32 if full else 16,
        "parallel_repeats": 1 if args.smoke else 3 if full else 1,
        "shape": {"d_model": 1024, "n_heads": 8, "d_mlp": 64} if args.smoke else common.SHAPE_7B,
    }


#: The environment of every benchmark run (unless already set): no network, quiet tokenizers.
RUN_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_run_env() -> None:
    """Apply :data:`RUN_ENV`; before transformers is imported (every area imports it lazily)."""
    for key, value in RUN_ENV.items():
        os.environ.setdefault(key, value)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    set_run_env()
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = common.resolve(args.device, args.dtype)
    if args.command == "memory-child":
        print(json.dumps(memory_child(args.n, device, dtype)))
        return {}
    areas = [a for a in args.areas.split(",") if a]
    models = [m for m in args.models.split(",") if m]
    unknown = (set(areas) - set(AREAS)) | (set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown area/model: {sorted(unknown)}")
    conf = settings(args)
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vsink-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    metrics: list[Metric] = []
    described: dict[str, Any] = {}
    notes: list[str] = []
    smoke_model: BenchModel | None = None  # smoke runs reuse the demo model for memory
    try:
        for key in models:
            timed_areas = [a for a in ("forward", "generation") if a in areas]
            if key == "demo" and "batch" in areas:
                timed_areas.append("batch")
            if not timed_areas:
                continue
            log(f"loading {key}")
            bm = _load(key, conf, device, dtype, workdir, smoke=args.smoke)
            sample = bm.inputs()
            described[key] = {
                **bm.description,
                "prompt": bm.prompt,
                "n_positions": int(sample.input_ids.shape[1]),
                "n_text": int(sample.text.sum()),
                "n_visual": int(sample.visual.sum()),
            }
            repeats = conf["demo_repeats"] if key == "demo" else conf["repeats"]
            # A 7B-shaped forward takes seconds on a CPU: one shared warm-up (plain and
            # hooked run the same kernels) instead of one per variant.
            heavy = key != "demo"
            if "forward" in areas:
                warm = [] if args.smoke else ["hooked"] if heavy else None
                metrics += bench_forward(bm, repeats=repeats, device=device, warmup=warm)
            if "generation" in areas:
                warm = [] if args.smoke else ["base"] if heavy else None
                metrics += bench_generation(
                    bm,
                    repeats=repeats,
                    device=device,
                    warmup=warm,
                    new_tokens=conf["new_tokens"],
                )
            if "batch" in areas and key == "demo":
                metrics += bench_batch(
                    bm,
                    repeats=conf["repeats"],
                    device=device,
                    n_items=conf["batch_items"],
                    warmup=[] if args.smoke else None,
                )
            if args.smoke and key == "demo":
                smoke_model = bm
            del bm
            gc.collect()
        if "memory" in areas:
            if args.smoke:
                rows = [memory_child(n, device, dtype, smoke_model) for n in conf["memory_ns"]]
                metrics += memory_metrics(rows, device)
            else:
                rows = run_memory_children(conf["memory_ns"], device, dtype)
                metrics += memory_metrics(rows, device)
                if device.type == "cpu" and sys.platform.startswith("linux"):
                    rows = run_memory_children(conf["memory_ns"], device, dtype, FIXED_MMAP_ENV)
                    metrics += memory_metrics(rows, device, variant="fixed_mmap")
        if "parallel" in areas and device.type == "cuda" and torch.cuda.device_count() < 2:
            notes.append("parallel: skipped, two processes need two GPUs (one per rank).")
        elif "parallel" in areas:
            metrics += area_parallel.bench_parallel(
                device=device,
                dtype=dtype,
                n_items=conf["parallel_items"],
                workdir=workdir,
                repeats=conf["parallel_repeats"],
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    payload = {
        "machine": common.machine_info(device),
        "settings": {
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "quick": args.quick and not args.full,
            "smoke": args.smoke,
            "areas": areas,
            "models": models,
            **{k: v for k, v in conf.items() if k != "shape"},
            "argv": list(sys.argv[1:] if argv is None else argv),
        },
        "models": described,
        "metrics": [m.to_json() for m in metrics],
        "notes": notes,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    common.write_results(args.out, payload)
    log(f"wrote {args.out} ({payload['seconds_total']} s)")
    if args.md is not None:
        args.md.write_text(report.render(payload))
        log(f"wrote {args.md}")
    return payload


def _load(
    key: str,
    conf: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    workdir: Path,
    *,
    smoke: bool,
) -> BenchModel:
    if key == "demo":
        return common.load_demo(device, dtype)
    return common.load_7b_shaped(
        workdir, n_layers=conf["layers"], device=device, dtype=dtype, shape=conf["shape"]
    )


if __name__ == "__main__":
    main()
