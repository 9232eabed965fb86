"""Shared pieces of the benchmarks: models, timing, a naive VAR reference, results.

Nothing here is part of the ``analysis`` package: these scripts measure it from
the outside, through its public API (``load_model``, ``forward``, ``generate``,
``VarIntervention``, ``score_heads``, ``find_sinks``), the way a user runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "analysis" / "demo"
DEFAULT_OUT = ROOT / "benchmarks" / "results.json"
DEFAULT_MD = ROOT / "benchmarks" / "RESULTS.md"

# LLaVA-1.5-7B's language-model layer shape (Vicuna-7B): only the layer count and
# the vocabulary are cut, so per-layer costs match the real model.
SHAPE_7B: dict[str, int] = {"d_model": 4096, "n_heads": 32, "d_mlp": 11008}
SINK_DIMS_7B = (1415, 2533)  # the registry's LLaVA-1.5-7B dims, planted below
N_TEXT_7B = 60  # text tokens around LLaVA-1.5's 576 visual tokens in a short VQA prompt


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the numbers came from; ratios only compare within one machine."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": _ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for package in ("transformers", "transformer-lens"):
        with contextlib.suppress(Exception):
            from importlib import metadata

            info[package] = metadata.version(package)
    return info


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    return None


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of ``fn()`` (device work included), and its result.

    CPU time is kept because on a shared machine it barely moves when other
    processes steal the cores, while wall time does: when the two disagree,
    the machine was busy.
    """
    synchronize(device)
    cpu = time.process_time()
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu, result


@dataclass
class Samples:
    """Per-variant timings of one interleaved run, wall and CPU seconds."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def ratio(self, numerator: str, denominator: str) -> float:
        return paired_ratio(self.wall, numerator, denominator)

    def checks(self, numerator: str, denominator: str) -> dict[str, float]:
        """The same ratio by other estimators, to tell a real effect from noise."""
        return {
            "ratio_of_min_wall": min(self.wall[numerator]) / min(self.wall[denominator]),
            "ratio_cpu_time": paired_ratio(self.cpu, numerator, denominator),
        }

    def to_json(self) -> dict[str, Any]:
        return {"wall": self.wall, "cpu": self.cpu}


def interleaved(
    variants: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    device: torch.device,
    warmup: Sequence[str] | None = None,
) -> Samples:
    """Run every variant once per repeat, alternating the order (ABBA...).

    Interleaving puts the variants' samples side by side in time, so load from
    other processes on a shared machine hits them alike; alternating the order
    cancels drift (caches, clock boost) within a repeat. ``warmup`` names the
    variants run once untimed first (default: all).
    """
    names = list(variants)
    for name in names if warmup is None else warmup:
        variants[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            seconds, cpu_seconds, _ = timed(variants[name], device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    return Samples(wall, cpu)


def paired_ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over repeats of the per-repeat ratio (paired, so shared load cancels)."""
    pairs = zip(samples[numerator], samples[denominator], strict=True)
    return statistics.median(a / b for a, b in pairs)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------- results


@dataclass
class Metric:
    """One measured number, its target (``op`` ``threshold``) and whether it passed.

    ``op`` is ``<=`` or ``>=``; ``None`` means the issue asks for the number only.
    """

    id: str
    area: str
    model: str
    name: str
    value: float
    unit: str
    op: str | None = None
    threshold: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.op is None or self.threshold is None:
            return None
        if self.op == "<=":
            return self.value <= self.threshold
        return self.value >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------- models


def resolve(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    from analysis.loading import resolve_device, resolve_dtype

    return resolve_device(device or "cpu"), resolve_dtype(dtype)


def demo_dims() -> list[int]:
    truth = json.loads((DEMO_DIR / "ground_truth.json").read_text())
    return [int(d) for d in truth["sink_dims"]]


def demo_questions(limit: int | None = None) -> list[dict[str, Any]]:
    lines = (DEMO_DIR / "questions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return rows[:limit] if limit else rows


def demo_image(name: str = "demo_00.png") -> Path:
    return DEMO_DIR / "images" / name


def build_7b_shaped(
    out_dir: Path,
    *,
    n_layers: int,
    image: Path,
    sink_fraction: float = 0.02,
    shape: dict[str, int] | None = None,
) -> Path:
    """A LLaVA model with LLaVA-1.5-7B's layer shape and ``n_layers`` layers, saved.

    It goes through the same path as the tests' tiny models (config ->
    ``save_pretrained`` -> :func:`analysis.loading.load_model`). Random weights
    have no sinks, so VAR would select nothing; the projector is edited so that
    about ``sink_fraction`` of ``image``'s visual tokens carry a massive
    activation in the first sink dim (see :func:`plant_visual_sinks`).
    """
    from analysis.families import get
    from analysis.tiny import TinySpec

    dims = shape or SHAPE_7B
    spec = TinySpec(
        n_layers=n_layers,
        d_model=dims["d_model"],
        n_heads=dims["n_heads"],
        n_kv_heads=dims["n_heads"],
        d_mlp=dims["d_mlp"],
        vision_hidden=64,
        image_size=336,  # CLIP ViT-L/14-336: a 24 x 24 grid, 576 visual tokens
        patch_size=14,
    )
    model, processor = get("llava").build_tiny(spec)
    sink_dim = SINK_DIMS_7B[0] if dims["d_model"] > SINK_DIMS_7B[0] else 0
    plant_visual_sinks(model, processor, image, dim=sink_dim, fraction=sink_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@torch.no_grad()
def plant_visual_sinks(
    model: Any, processor: Any, image: Path, *, dim: int, fraction: float, unit: int = 0
) -> None:
    """Give the top ``fraction`` of ``image``'s visual tokens a massive activation in ``dim``.

    Projector hidden unit ``unit`` becomes a sharp threshold on a random
    direction of the vision features (GELU of a large negative number is ~0),
    and it alone writes to ``dim``: the selected tokens enter the LLM with
    ``x_dim`` ~ 1000, far above the other dims, so phi is near its bound
    sqrt(d_model) at every layer (the residual stream carries it along).
    """
    from PIL import Image

    projector = model.model.multi_modal_projector
    seen: dict[str, torch.Tensor] = {}
    handle = projector.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    try:
        pixels = processor.image_processor(
            images=[Image.open(image).convert("RGB")], return_tensors="pt"
        )["pixel_values"]
        model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    finally:
        handle.remove()
    features = seen["x"][0].float()  # [vis, vision_hidden]
    direction = torch.randn(features.shape[-1], generator=torch.Generator().manual_seed(0))
    projection = features @ direction
    threshold = torch.quantile(projection, 1.0 - fraction)
    sharpness = 50.0 / float(projection.std().clamp_min(1e-6))
    linear_1, linear_2 = projector.linear_1, projector.linear_2
    linear_1.weight[unit] = direction * sharpness
    linear_1.bias[unit] = -threshold * sharpness
    hidden = torch.nn.functional.gelu((projection - threshold) * sharpness)
    selected = hidden[projection >= threshold]
    linear_2.weight[dim] = 0.0
    linear_2.weight[dim, unit] = 1000.0 / float(selected.median().clamp_min(1e-3))
    linear_2.bias[dim] = 0.0


def plain_twin(loaded: Any) -> Any:
    """The same checkpoint as a plain HF eager model, sharing the bridge's weights.

    The bridge replaces modules inside ``loaded.hf_model``, so calling it is not
    a plain HF forward; this twin is. Weights are assigned, not copied, so a
    7B-shaped model is held in memory once.
    """
    from transformers import AutoModelForImageTextToText

    from analysis.loading import _quiet

    with _quiet():
        twin = AutoModelForImageTextToText.from_pretrained(
            loaded.name_or_path,
            attn_implementation="eager",
            dtype=loaded.dtype,
            local_files_only=True,
        )
    state = {
        k.replace("._original_component", ""): v for k, v in loaded.hf_model.state_dict().items()
    }
    report = twin.load_state_dict(state, strict=False, assign=True)
    if report.missing_keys:
        raise RuntimeError(f"plain twin: weights not found in the bridge: {report.missing_keys}")
    return twin.to(loaded.device).eval()


def prompt_with_text_tokens(model: Any, image: Path, n_text: int) -> str:
    """A question whose templated prompt has about ``n_text`` text tokens."""
    from analysis.tokens import build_inputs

    words = [
        "describe",
        "the",
        "picture",
        ".",
        "is",
        "there",
        "a",
        "red",
        "object",
        "in",
        "the",
        "image",
        "?",
        "what",
        "color",
        "is",
        "the",
        "object",
        "on",
        "the",
        "left",
        "of",
        "this",
        "image",
        "?",
        "is",
        "there",
        "a",
        "blue",
        "object",
        "at",
        "the",
        "bottom",
        "right",
        "?",
    ]
    prompt = ""
    for count in range(1, 400):
        prompt = " ".join(words[i % len(words)] for i in range(count))
        inputs = build_inputs(model, image, prompt)
        if int(inputs.text.sum()) >= n_text:
            break
    return prompt


@dataclass
class BenchModel:
    """A loaded model with the prompt, sink dims and VAR settings used to time it."""

    key: str
    loaded: Any
    image: Path
    prompt: str
    dims: list[int]
    var_layers: tuple[int, ...] | None
    description: dict[str, Any]

    def inputs(self) -> Any:
        from analysis.tokens import build_inputs

        return build_inputs(self.loaded, self.image, self.prompt)


def load_7b_shaped(
    workdir: Path, *, n_layers: int, device: torch.device, dtype: torch.dtype, shape=None
) -> BenchModel:
    from analysis.loading import load_model

    image = demo_image()
    path = build_7b_shaped(
        workdir / f"llava7b_shape_{n_layers}l", n_layers=n_layers, image=image, shape=shape
    )
    loaded = load_model(path, device=device, dtype=dtype)
    prompt = prompt_with_text_tokens(loaded, image, N_TEXT_7B)
    dims = [d for d in SINK_DIMS_7B if d < loaded.d_model] or [0]
    return BenchModel(
        key="llava7b_shape",
        loaded=loaded,
        image=image,
        prompt=prompt,
        dims=dims,
        # Every layer, not the paper's 2 .. L-2 (29 of a 7B's 32 layers): with a
        # few layers that rule leaves none, and all layers is the worst case.
        var_layers=tuple(range(n_layers)),
        description={
            **loaded.describe(),
            "note": "random weights, LLaVA-1.5-7B layer shape, few layers, small vocab; "
            "visual sinks planted in the projector",
        },
    )


def load_demo(device: torch.device, dtype: torch.dtype) -> BenchModel:
    from analysis.loading import DEMO_MODEL_DIR, load_model

    loaded = load_model(DEMO_MODEL_DIR, device=device, dtype=dtype)
    question = demo_questions(1)[0]
    return BenchModel(
        key="demo",
        loaded=loaded,
        image=DEMO_DIR / "images" / question["image"],
        prompt=question["text"],
        dims=demo_dims(),
        var_layers=None,  # the paper's default, 2 .. L-2
        description={**loaded.describe(), "note": "bundled synthetic demo model"},
    )


# --------------------------------------------------------------------------- generation


@contextlib.contextmanager
def no_eos(loaded: Any) -> Iterator[Any]:
    """A view of ``loaded`` that never stops early, so every run makes the same tokens.

    Random and synthetic models hit EOS after a few tokens; tokens/s over a
    fixed count needs generation to run to ``max_new_tokens``.
    """
    config = loaded.hf_model.generation_config
    previous = config.eos_token_id
    config.eos_token_id = None
    try:
        yield dataclasses.replace(loaded, eos_token_ids=())
    finally:
        config.eos_token_id = previous


class StepClock:
    """Timestamps of every forward call of the HF model (prefill, then one per token)."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = device
        self.stamps: list[float] = []
        self._handle: Any = None

    def __enter__(self) -> StepClock:
        self.stamps = []

        def pre_hook(_module: Any, _args: Any) -> None:
            synchronize(self.device)
            self.stamps.append(time.perf_counter())

        self._handle = self.module.register_forward_pre_hook(pre_hook)
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        self._handle.remove()

    @property
    def steps(self) -> int:
        return max(len(self.stamps) - 1, 0)

    @property
    def decode_seconds(self) -> float:
        """Time from the first decoding step to the end (tokens 2 .. N)."""
        return self.stamps[-1] - self.stamps[1] if len(self.stamps) > 2 else float("nan")
