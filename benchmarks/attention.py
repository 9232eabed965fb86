"""What users feel: peak memory above the weights and time, eager vs the routed attention.

    python benchmarks/attention.py --quick                         # CPU, minutes (make bench-attention)
    python benchmarks/attention.py --device cuda --dtype bfloat16 \\
        --shapes llava7b --layers 32 --batches 1,4,8               # the GPU run (benchmarks/gpu/run.sh)

Models are random-weight LMMs with the real checkpoints' layer widths, few
layers (``--layers``), a small vocabulary and visual sinks planted in the
projector (so VAR and the sink knock-out act; the rows VAR changed are
reported):

* ``llava7b``: LLaVA-1.5-7B's layer (d_model 4096, 32 heads, MLP 11008), a
  336 px image: 576 visual tokens, ~600 in all;
* ``next7b``: the same layer in LLaVA-NeXT's anyres layout, a 640 x 480 image
  (the POPE / COCO size): 2340 visual tokens, ~2350 in all.

Variants of one prefill forward (``analysis.capture.forward``):

* ``hf_sdpa``: plain HF (``attn_implementation="sdpa"``), sharing the weights;
* ``eager_all_logits``: the bridge as before this change (eager attention in
  every layer, logits at every position);
* ``eager`` / ``sdpa``: the bridge without hooks, eager (:func:`eager_attention`)
  vs routed (SDPA), logits at the last position;
* ``var_eager`` / ``var_rows``: VAR in every layer, eager vs row-sparse;
* ``ko_eager`` / ``ko_sdpa``: pre-softmax knock-out of the visual sinks in every
  layer, eager vs SDPA with an additive mask.

Generation (greedy, KV cache, EOS off, ``--new-tokens``): ``hf_sdpa``,
``sdpa``, ``var_eager``, ``var_rows``, ``ko_sdpa``; tokens/s of the decoding
steps (tokens 2 .. N) and end to end.

Memory: each variant once, the peak above what was allocated before the call
(weights and inputs): CUDA ``max_memory_allocated``; CPU the process's VmHWM
(reset before the call), with glibc's mmap threshold pinned so freed blocks
go back to the system between variants. Times: variants interleaved (ABBA),
median of per-repeat ratios (``benchmarks/common.py``).

Why one file of ~800 lines: it is a stand-alone script (not part of the
``analysis`` package) that the GPU run executes as is, and its sections
(models, measuring, variants, one case, targets, report) all work on the same
variant names, shape table and result rows; each section reads top to bottom
in the order a run goes through them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent

SHAPES: dict[str, dict[str, Any]] = {
    "llava7b": {"family": "llava", "image_hw": (336, 336)},
    "next7b": {"family": "llava_next", "image_hw": (480, 640)},
}
WIDTH_7B = {"d_model": 4096, "n_heads": 32, "d_mlp": 11008}
QUICK_WIDTH = {"d_model": 512, "n_heads": 8, "d_mlp": 1376}  # --quick code-path check only
SINK_DIM = 1415  # LLaVA-1.5-7B's first sink dim (registry); planted below
PROMPT = "is there a red object in the image ? answer with one word ."
DEFAULT_OUT = HERE / "attention_results.json"
DEFAULT_MD = HERE / "ATTENTION.md"

# Targets (issue 19).
VAR_MEMORY_MAX = 1.30  # VAR prefill peak above weights / plain SDPA forward's, at ~2349 tokens
VAR_TIME_MAX = 1.10  # VAR prefill time / plain SDPA forward's
VAR_DECODE_MIN = 0.90  # VAR decoding tokens/s / plain's


def log(message: str) -> None:
    print(f"[attention-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models


def _image(hw: tuple[int, int], seed: int = 0) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8))


@torch.no_grad()
def _plant_sinks(model: Any, processor: Any, image: Any, *, dim: int, fraction: float) -> None:
    """Projector unit 0 fires on ~``fraction`` of the image's visual tokens and writes ~1000
    into ``dim`` (as benchmarks/common.py's plant_visual_sinks, for both LLaVA layouts)."""
    projector = model.model.multi_modal_projector
    device = next(projector.parameters()).device
    seen: dict[str, torch.Tensor] = {}
    handle = projector.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    pixels = processor.image_processor(images=[image], return_tensors="pt")
    kwargs = {"pixel_values": pixels["pixel_values"].to(device, model.dtype)}
    if "image_sizes" in pixels:
        kwargs["image_sizes"] = pixels["image_sizes"].to(device)
    try:
        model.model.get_image_features(**kwargs)
    finally:
        handle.remove()
    features = seen["x"].reshape(-1, seen["x"].shape[-1]).float()
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(features.shape[-1], generator=generator).to(device)
    projection = features @ direction
    threshold = torch.quantile(projection, 1.0 - fraction)
    sharpness = 50.0 / float(projection.std().clamp_min(1e-6))
    hidden = torch.nn.functional.gelu((projection - threshold) * sharpness)
    selected = hidden[projection >= threshold]
    linear_1, linear_2 = projector.linear_1, projector.linear_2
    linear_1.weight[0] = (direction * sharpness).to(linear_1.weight.dtype)
    linear_1.bias[0] = (-threshold * sharpness).to(linear_1.bias.dtype)
    linear_2.weight[dim] = 0.0
    linear_2.weight[dim, 0] = 1000.0 / float(selected.median().clamp_min(1e-3))
    linear_2.bias[dim] = 0.0


def build_shaped(
    key: str,
    out_dir: Path,
    *,
    n_layers: int,
    width: dict[str, int],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Path, int]:
    """Build (on ``device``, saved in ``dtype``), plant sinks; returns the folder and sink dim.

    A folder already built with the same key, layers, width and dtype is reused.
    """
    from analysis.families import get
    from analysis.tiny import TinySpec

    spec = TinySpec(
        n_layers=n_layers,
        d_model=width["d_model"],
        n_heads=width["n_heads"],
        n_kv_heads=width["n_heads"],
        d_mlp=width["d_mlp"],
        vision_hidden=64,
        image_size=336,  # CLIP ViT-L/14-336: 24 x 24 patches per tile
        patch_size=14,
    )
    dim = SINK_DIM if width["d_model"] > SINK_DIM else 1
    name = f"{key}_{n_layers}l_{width['d_model']}_{str(dtype).removeprefix('torch.')}"
    marker, folder = out_dir / f"{name}.done", out_dir / name
    if marker.exists():
        return folder, dim
    with torch.device(device):
        model, processor = get(SHAPES[key]["family"]).build_tiny(spec)
    model = model.to(dtype)
    model.config.text_config.max_position_embeddings = 4096
    _plant_sinks(model, processor, _image(SHAPES[key]["image_hw"]), dim=dim, fraction=0.02)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    gc.collect()
    marker.touch()
    return folder, dim


def hf_twin(loaded: Any, implementation: str) -> Any:
    """Plain HF model on the bridge's weight tensors (assigned, not copied)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        twin = AutoModelForImageTextToText.from_config(
            loaded.config, attn_implementation=implementation, dtype=loaded.dtype
        )
    state = {
        k.replace("._original_component", ""): v for k, v in loaded.hf_model.state_dict().items()
    }
    report = twin.load_state_dict(state, strict=False, assign=True)
    if report.missing_keys:
        raise RuntimeError(f"HF twin: weights missing from the bridge: {report.missing_keys}")
    # Buffers (rotary inv_freq, position ids) are taken from the bridge's modules too.
    sources = {
        k.replace("._original_component", ""): v
        for k, v in loaded.hf_model.named_buffers(remove_duplicate=False)
    }
    for module_name, module in twin.named_modules():
        for name, buffer in list(module._buffers.items()):
            full = f"{module_name}.{name}" if module_name else name
            if buffer is not None and buffer.is_meta:
                if full not in sources:
                    raise RuntimeError(f"HF twin: buffer {full} not found in the bridge")
                module._buffers[name] = sources[full]
    for module in twin.modules():  # plain attributes copied from inv_freq at init
        if (
            getattr(module, "original_inv_freq", None) is not None
            and module.original_inv_freq.is_meta
        ):
            module.original_inv_freq = module.inv_freq
    twin.generation_config = loaded.hf_model.generation_config
    return twin.eval()


# ----------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_above(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated during ``fn()`` above what was allocated before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    fn()
    return _rss("VmHWM") - before


def timed_interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per variant, interleaved (ABBA)."""
    from common import interleaved

    samples = interleaved(variants, repeats=repeats, device=device)
    return samples.wall, samples.cpu


def ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    from common import paired_ratio

    return paired_ratio(samples, a, b)


# ----------------------------------------------------------------------------- variants


def forward_variants(loaded: Any, twin: Any, inputs: Any, dims: list[int]) -> dict[str, Any]:
    from analysis.ablation import KnockOut
    from analysis.attention import eager_attention
    from analysis.capture import forward
    from analysis.var import VarConfig, VarIntervention

    layers = tuple(range(loaded.n_layers))
    config = VarConfig(layers=layers)
    tensors = {k: v.to(loaded.device) for k, v in inputs.tensors.items()}
    mask = tensors["attention_mask"].long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    records: dict[str, Any] = {}

    def var(eager: bool) -> Callable[[], Any]:
        def run() -> None:
            intervention = VarIntervention(loaded, inputs, dims=dims, config=config)
            with eager_attention(loaded) if eager else contextlib.nullcontext():
                forward(loaded, inputs, intervention.fwd_hooks(), logits_to_keep=1)
            records["var"] = intervention.record().summary()

        return run

    def knock(eager: bool) -> Callable[[], Any]:
        def run() -> None:
            ko = KnockOut(loaded, inputs, target="sinks", dims=dims, layers=list(layers))
            with eager_attention(loaded) if eager else contextlib.nullcontext():
                forward(loaded, inputs, ko.fwd_hooks(), logits_to_keep=1)
            counts = ko.blocked_counts()
            records["ko_blocked_per_layer"] = [sum(counts[layer]) for layer in sorted(counts)]

        return run

    def plain(eager: bool, keep: int) -> Callable[[], Any]:
        def run() -> None:
            with eager_attention(loaded) if eager else contextlib.nullcontext():
                forward(loaded, inputs, logits_to_keep=keep)

        return run

    def hf() -> None:
        with torch.no_grad():
            twin(**tensors, position_ids=position_ids, logits_to_keep=1, use_cache=False)

    variants = {
        "hf_sdpa": hf,
        "eager_all_logits": plain(True, 0),
        "eager": plain(True, 1),
        "sdpa": plain(False, 1),
        "var_eager": var(True),
        "var_rows": var(False),
        "ko_eager": knock(True),
        "ko_sdpa": knock(False),
    }
    return {"variants": variants, "records": records}


def generation_variants(
    loaded: Any, twin: Any, inputs: Any, dims: list[int], new_tokens: int
) -> dict[str, Callable[[], dict[str, float]]]:
    from common import StepClock

    from analysis.ablation import KnockOut
    from analysis.attention import eager_attention
    from analysis.generation import generate
    from analysis.var import VarConfig, VarIntervention

    layers = tuple(range(loaded.n_layers))
    device = loaded.device
    tensors = {k: v.to(device) for k, v in inputs.tensors.items()}

    def clocked(module: Any, fn: Callable[[], Any]) -> dict[str, float]:
        cpu_stamps: list[float] = []
        handle = module.register_forward_pre_hook(
            lambda _m, _a: cpu_stamps.append(time.process_time())
        )
        synchronize(device)
        start = time.perf_counter()
        try:
            with StepClock(module, device) as clock:
                fn()
        finally:
            handle.remove()
        total = time.perf_counter() - start
        decoded = (new_tokens - 1) * inputs.batch_size
        return {
            "decode_tokens_per_s": decoded / clock.decode_seconds,
            # Process CPU time of the decoding steps: steadier on a shared machine.
            "decode_tokens_per_cpu_s": decoded / (time.process_time() - cpu_stamps[1]),
            "tokens_per_s": new_tokens * inputs.batch_size / total,
        }

    def ours(hooks: Callable[[], list], eager: bool = False) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            fwd = hooks()
            with eager_attention(loaded) if eager else contextlib.nullcontext():
                return clocked(
                    loaded.hf_model,
                    lambda: generate(
                        loaded, inputs, max_new_tokens=new_tokens, fwd_hooks=fwd, stop_at_eos=False
                    ),
                )

        return run

    def hf() -> dict[str, float]:
        def go() -> None:
            with torch.no_grad():
                twin.generate(
                    **tensors,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=loaded.pad_token_id or 0,
                )

        return clocked(twin, go)

    config = VarConfig(layers=layers)
    return {
        "hf_sdpa": hf,
        "sdpa": ours(lambda: []),
        "var_eager": ours(
            lambda: VarIntervention(loaded, inputs, dims=dims, config=config).fwd_hooks(), True
        ),
        "var_rows": ours(
            lambda: VarIntervention(loaded, inputs, dims=dims, config=config).fwd_hooks()
        ),
        "ko_sdpa": ours(
            lambda: KnockOut(
                loaded, inputs, target="sinks", dims=dims, layers=list(layers)
            ).fwd_hooks()
        ),
    }


def check_equal(loaded: Any, inputs: Any, dims: list[int]) -> dict[str, float]:
    """Max |logit| difference, routed vs eager, for plain / VAR / knock-out (last position)."""
    from analysis.ablation import KnockOut
    from analysis.attention import eager_attention
    from analysis.capture import forward
    from analysis.var import VarConfig, VarIntervention

    layers = tuple(range(loaded.n_layers))
    out: dict[str, float] = {}
    makers: dict[str, Callable[[], list]] = {
        "plain": lambda: [],
        "var": lambda: VarIntervention(
            loaded, inputs, dims=dims, config=VarConfig(layers=layers)
        ).fwd_hooks(),
        "knock_out": lambda: KnockOut(
            loaded, inputs, target="sinks", dims=dims, layers=list(layers)
        ).fwd_hooks(),
    }
    for name, make in makers.items():
        fast = forward(loaded, inputs, make(), logits_to_keep=1).float()
        with eager_attention(loaded):
            eager = forward(loaded, inputs, make(), logits_to_keep=1).float()
        out[name] = float((fast - eager).abs().max())
    return out


# ----------------------------------------------------------------------------- one case


def run_case(
    key: str,
    loaded: Any,
    twin: Any,
    dims: list[int],
    batch: int,
    *,
    repeats: int,
    new_tokens: int,
    areas: set[str],
) -> dict[str, Any]:
    from analysis.tokens import build_batch

    image = _image(SHAPES[key]["image_hw"])
    inputs = build_batch(loaded, [(image, PROMPT)] * batch)
    n_pos = int(inputs.input_ids.shape[1])
    device = loaded.device
    case: dict[str, Any] = {
        "shape": key,
        "layers": loaded.n_layers,
        "batch": batch,
        "tokens": n_pos,
    }
    log(f"{key}: batch {batch}, {n_pos} tokens")
    if "forward" in areas:
        built = forward_variants(loaded, twin, inputs, dims)
        variants = built["variants"]
        for fn in variants.values():  # warm-up, and VAR / knock-out records
            fn()
        case["var_record"] = dict(built["records"].get("var", {}))
        case["ko_blocked_per_layer"] = built["records"].get("ko_blocked_per_layer")
        case["memory_bytes"] = {name: peak_above(fn, device) for name, fn in variants.items()}
        log(f"{key} b{batch}: memory done")
        wall, cpu = timed_interleaved(variants, repeats, device)
        case["forward_seconds"] = {name: sorted(v)[len(v) // 2] for name, v in wall.items()}
        case["forward_wall"], case["forward_cpu"] = wall, cpu
        pairs = {
            "sdpa/eager": ("sdpa", "eager"),
            "sdpa/hf_sdpa": ("sdpa", "hf_sdpa"),
            "var_rows/sdpa": ("var_rows", "sdpa"),
            "var_eager/eager": ("var_eager", "eager"),
            "var_rows/var_eager": ("var_rows", "var_eager"),
            "ko_sdpa/sdpa": ("ko_sdpa", "sdpa"),
            "ko_sdpa/ko_eager": ("ko_sdpa", "ko_eager"),
        }
        case["time_ratios"] = {k: ratio(wall, a, b) for k, (a, b) in pairs.items()}
        case["cpu_time_ratios"] = {k: ratio(cpu, a, b) for k, (a, b) in pairs.items()}
        mem = case["memory_bytes"]
        case["memory_ratios"] = {
            k: mem[a] / max(mem[b], 1) for k, (a, b) in pairs.items() if k != "sdpa/hf_sdpa"
        }
        case["memory_ratios"]["sdpa/hf_sdpa"] = mem["sdpa"] / max(mem["hf_sdpa"], 1)
        case["max_logit_diff_vs_eager"] = check_equal(loaded, inputs, dims)
        log(f"{key} b{batch}: forward done")
    if "generation" in areas and new_tokens > 1:
        variants = generation_variants(loaded, twin, inputs, dims, new_tokens)
        for fn in variants.values():
            fn()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        names = list(variants)
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else reversed(names):
                runs[name].append(variants[name]())
        decode = {n: [r["decode_tokens_per_s"] for r in rs] for n, rs in runs.items()}
        total = {n: [r["tokens_per_s"] for r in rs] for n, rs in runs.items()}
        case["decode_tokens_per_s"] = {n: sorted(v)[len(v) // 2] for n, v in decode.items()}
        case["generate_tokens_per_s"] = {n: sorted(v)[len(v) // 2] for n, v in total.items()}
        decode_cpu = {n: [r["decode_tokens_per_cpu_s"] for r in rs] for n, rs in runs.items()}
        gen_pairs = {
            "var_rows/sdpa": ("var_rows", "sdpa"),
            "var_eager/sdpa": ("var_eager", "sdpa"),
            "ko_sdpa/sdpa": ("ko_sdpa", "sdpa"),
            "sdpa/hf_sdpa": ("sdpa", "hf_sdpa"),
        }
        case["decode_ratios"] = {k: ratio(decode, a, b) for k, (a, b) in gen_pairs.items()}
        case["decode_cpu_ratios"] = {k: ratio(decode_cpu, a, b) for k, (a, b) in gen_pairs.items()}
        case["new_tokens"] = new_tokens
        log(f"{key} b{batch}: generation done")
    return case


def targets(cases: list[dict[str, Any]], cpu_time: bool) -> list[dict[str, Any]]:
    """Each target's measured value and pass / miss, per case where it applies.

    ``cpu_time``: judge time targets on process CPU time (a CPU run on a shared
    machine, where wall time moves with other processes' load), else wall time.
    """
    clock = "process CPU time" if cpu_time else "wall time"
    forward_key = "cpu_time_ratios" if cpu_time else "time_ratios"
    decode_key = "decode_cpu_ratios" if cpu_time else "decode_ratios"
    out = []
    for case in cases:
        label = f"{case['shape']} {case['layers']}L b{case['batch']} ({case['tokens']} tokens)"
        if "memory_ratios" in case:
            out.append(
                {
                    "case": label,
                    "target": "VAR prefill peak memory above weights / plain SDPA forward",
                    "value": case["memory_ratios"]["var_rows/sdpa"],
                    "op": "<=",
                    "threshold": VAR_MEMORY_MAX,
                    "applies": case["tokens"] >= 2000,
                }
            )
            out.append(
                {
                    "case": label,
                    "target": f"VAR prefill time / plain SDPA forward ({clock})",
                    "value": case[forward_key]["var_rows/sdpa"],
                    "op": "<=",
                    "threshold": VAR_TIME_MAX,
                    "applies": True,
                }
            )
        if "decode_ratios" in case:
            out.append(
                {
                    "case": label,
                    "target": f"decoding tokens/s with VAR / plain ({clock})",
                    "value": case[decode_key]["var_rows/sdpa"],
                    "op": ">=",
                    "threshold": VAR_DECODE_MIN,
                    "applies": True,
                }
            )
    for row in out:
        ok = (
            row["value"] <= row["threshold"]
            if row["op"] == "<="
            else row["value"] >= row["threshold"]
        )
        row["passed"] = bool(ok)
    return out


# ----------------------------------------------------------------------------- report

MiB = 2**20


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [
        "# Attention routing benchmark",
        "",
        f"Generated by `{meta['command']}` ({meta['device']}, {meta['dtype']}, "
        f"{meta['threads']} threads, repeats {meta['repeats']}, "
        f"{meta['seconds']:.0f} s; torch {meta['torch']}, transformers {meta['transformers']})"
        + ("." if meta.get("complete", True) else "; PARTIAL: the run stopped before the end."),
        "",
        "Peak memory is above the weights and inputs (see benchmarks/attention.py).",
        "",
    ]
    forward_names = [
        "hf_sdpa",
        "eager_all_logits",
        "eager",
        "sdpa",
        "var_eager",
        "var_rows",
        "ko_eager",
        "ko_sdpa",
    ]
    cases = payload["cases"]
    if any("memory_bytes" in c for c in cases):
        lines += [
            "## Prefill forward: peak memory above weights (MiB) / median time (s)",
            "",
            "| case | " + " | ".join(forward_names) + " |",
            "|---|" + "---|" * len(forward_names),
        ]
        for c in cases:
            if "memory_bytes" not in c:
                continue
            cells = [
                f"{c['memory_bytes'][n] / MiB:.0f} / {c['forward_seconds'][n]:.3f}"
                for n in forward_names
            ]
            label = f"{c['shape']} {c['layers']}L b{c['batch']} ({c['tokens']} tok)"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        ratio_names = list(next(c for c in cases if "time_ratios" in c)["time_ratios"])
        lines += [
            "",
            "## Prefill ratios (peak memory / wall time / process CPU time)",
            "",
            "| case | " + " | ".join(ratio_names) + " |",
            "|---|" + "---|" * len(ratio_names),
        ]
        for c in cases:
            if "time_ratios" not in c:
                continue
            cells = [
                f"{c['memory_ratios'][n]:.2f}x / {c['time_ratios'][n]:.2f}x"
                f" / {c.get('cpu_time_ratios', c['time_ratios'])[n]:.2f}x"
                for n in ratio_names
            ]
            label = f"{c['shape']} {c['layers']}L b{c['batch']}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Peak memory above the weights, before (eager attention, logits at every",
            "position: the toolkit before routing) and after (routed, last-position logits):",
            "",
        ]
        for c in cases:
            if "memory_bytes" in c:
                m = {k: v / MiB for k, v in c["memory_bytes"].items()}
                lines.append(
                    f"- {c['shape']} {c['layers']}L b{c['batch']}, {c['tokens']} tokens: plain "
                    f"{m['eager_all_logits']:.0f} -> {m['sdpa']:.0f} MiB, VAR "
                    f"{m['var_eager']:.0f} -> {m['var_rows']:.0f} MiB, knock-out "
                    f"{m['ko_eager']:.0f} -> {m['ko_sdpa']:.0f} MiB (plain HF SDPA "
                    f"{m['hf_sdpa']:.0f} MiB)"
                )
        lines += ["", "Routed vs eager, max |logit| difference at the last position:", ""]
        for c in cases:
            if "max_logit_diff_vs_eager" in c:
                diffs = ", ".join(f"{k} {v:.1e}" for k, v in c["max_logit_diff_vs_eager"].items())
                var = c.get("var_record", {})
                lines.append(
                    f"- {c['shape']} b{c['batch']}: {diffs}; VAR changed "
                    f"{var.get('rows_changed')} rows; knock-out blocked "
                    f"{c.get('ko_blocked_per_layer')} keys per layer"
                )
    if any("decode_tokens_per_s" in c for c in cases):
        gen_names = list(
            next(c for c in cases if "decode_tokens_per_s" in c)["decode_tokens_per_s"]
        )
        lines += [
            "",
            "## Generation: decoding tokens/s (tokens 2..N) / end-to-end tokens/s",
            "",
            "| case | " + " | ".join(gen_names) + " | VAR rows / plain, decode (wall / CPU) |",
            "|---|" + "---|" * (len(gen_names) + 1),
        ]
        for c in cases:
            if "decode_tokens_per_s" not in c:
                continue
            cells = [
                f"{c['decode_tokens_per_s'][n]:.2f} / {c['generate_tokens_per_s'][n]:.2f}"
                for n in gen_names
            ]
            label = f"{c['shape']} b{c['batch']} ({c['new_tokens']} new)"
            lines.append(
                f"| {label} | "
                + " | ".join(cells)
                + f" | {c['decode_ratios']['var_rows/sdpa']:.2f}x"
                + f" / {c.get('decode_cpu_ratios', c['decode_ratios'])['var_rows/sdpa']:.2f}x |"
            )
    if payload.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in payload["notes"]]]
    lines += ["", "## Targets", "", "| case | target | measured | target | result |"]
    lines.append("|---|---|---|---|---|")
    for t in payload["targets"]:
        result = ("pass" if t["passed"] else "**MISS**") if t["applies"] else "(report only)"
        lines.append(
            f"| {t['case']} | {t['target']} | {t['value']:.3f}x | {t['op']} {t['threshold']:.2f}x "
            f"| {result} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def _pin_malloc() -> None:
    """Re-exec with glibc's mmap threshold pinned (CPU memory numbers; see module doc)."""
    if platform.system() == "Linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


#: The environment of every benchmark run (unless already set): no network, quiet tokenizers.
RUN_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_run_env() -> None:
    """Apply :data:`RUN_ENV` and make the checkout's ``analysis`` importable without installing.

    Called by :func:`main` before transformers and ``analysis`` are imported (lazily).
    """
    for key, value in RUN_ENV.items():
        os.environ.setdefault(key, value)
    if str(HERE.parent) not in sys.path:
        sys.path.insert(1, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    set_run_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--shapes", default="llava7b,next7b", help="comma list, SHAPE or SHAPE:LAYERS"
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batches", default="1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--areas", default="forward,generation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="where the models are built (kept)")
    parser.add_argument(
        "--quick", action="store_true", help="narrow layers (d_model 512): a code-path check only"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--md", default=str(DEFAULT_MD))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        _pin_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    from analysis.loading import load_model, resolve_dtype

    dtype = resolve_dtype(args.dtype)
    width = QUICK_WIDTH if args.quick else WIDTH_7B
    workdir = Path(args.workdir or os.environ.get("TMPDIR", "/tmp")) / "vsink_attention_bench"
    workdir.mkdir(parents=True, exist_ok=True)
    areas = set(args.areas.split(","))
    start = time.perf_counter()
    cases: list[dict[str, Any]] = []

    def write(cases: list[dict[str, Any]], done: bool) -> None:
        _write_results(args, argv, width, dtype, device, start, cases, done)

    for entry in args.shapes.split(","):
        key, _, layers_text = entry.partition(":")
        n_layers = int(layers_text) if layers_text else args.layers
        if key not in SHAPES:
            parser.error(f"unknown shape {key!r}; choose from {sorted(SHAPES)}")
        log(f"building {key} ({n_layers} layers, d_model {width['d_model']})")
        folder, dim = build_shaped(
            key, workdir, n_layers=n_layers, width=width, device=device, dtype=dtype
        )
        loaded = load_model(folder, device=device, dtype=dtype)
        twin = hf_twin(loaded, "sdpa")
        for batch in [int(b) for b in args.batches.split(",")]:
            cases.append(
                run_case(
                    key,
                    loaded,
                    twin,
                    [dim],
                    batch,
                    repeats=args.repeats,
                    new_tokens=args.new_tokens,
                    areas=areas,
                )
            )
            write(cases, done=False)  # what is measured so far survives a timeout
        del loaded, twin
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write(cases, done=True)
    return 0


def _write_results(
    args: Any,
    argv: list[str] | None,
    width: dict[str, int],
    dtype: torch.dtype,
    device: torch.device,
    start: float,
    cases: list[dict[str, Any]],
    done: bool,
) -> None:
    import transformers

    payload = {
        "meta": {
            "command": "python benchmarks/attention.py " + " ".join(argv or sys.argv[1:]),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."),
            "layers": args.layers,
            "width": width,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "seconds": time.perf_counter() - start,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "complete": done,
        },
        "cases": cases,
    }
    payload["targets"] = targets(cases, cpu_time=device.type == "cpu")
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    Path(args.md).write_text(markdown(payload))
    log(f"wrote {args.out} and {args.md} ({'complete' if done else 'partial'})")


if __name__ == "__main__":
    raise SystemExit(main())
