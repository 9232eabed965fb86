"""The commands' inputs, resolved and checked before any model is loaded.

The model path, image files, ``--dims``, answers, a benchmark's or a dataset's
items, and the output files (checked writable up front).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from analysis.cli.tables import console


def resolve_model_path(model: str | None) -> str:
    if model is not None:
        return model
    from analysis.loading import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"The bundled demo model is missing at {DEMO_MODEL_DIR}; rebuild it with "
            "`python -m analysis.demo.build` or pass a MODEL."
        )
    return str(DEMO_MODEL_DIR)


def load(
    model: str | None,
    device: str | None,
    dtype: str | None,
    device_map: str | None = None,
    max_length: int | None = None,
) -> Any:
    """Load MODEL (the demo model when None) with a status line.

    Commands call it as ``analysis.cli.load`` (looked up per call), so a caller
    can replace the loader once for every command, as the tests do.
    """
    from analysis.loading import load_model
    from analysis.tokens import MAX_LENGTH_KEY

    path = resolve_model_path(model)
    with console.status(f"loading {escape(path)}"):
        loaded = load_model(path, device=device, dtype=dtype, device_map=device_map)
    if max_length is not None:
        loaded.extra[MAX_LENGTH_KEY] = max_length
    return loaded


def check_outputs(**outputs: Path | None) -> None:
    """Output files by option name (``json_out`` is ``--json``), checked writable up front."""
    from analysis.fsio import check_output_file

    for option, path in outputs.items():
        check_output_file(path, "--" + option.removesuffix("_out").replace("_", "-"))


def demo_dir() -> Path:
    from analysis.loading import DEMO_MODEL_DIR

    return DEMO_MODEL_DIR.parent


def image_paths(images: list[Path] | None, model: str | None) -> list[Path]:
    """The image files of --images (or the demo's), each decoded once: call before loading."""
    from analysis.tokens import check_images, collect_images

    if images:
        found = collect_images(images)
    elif model is not None:
        raise ValueError("--images is required with a MODEL (the demo images suit only the demo).")
    else:
        found = collect_images(demo_dir() / "images")
    check_images(found)
    return found


def single_image(image: Path | None, model: str | None) -> Path:
    """The given image file, or the first demo image when running on the demo model."""
    if image is not None:
        if image.is_dir():
            raise ValueError(f"--image takes one image file; {image} is a folder.")
        return image_paths([image], model)[0]
    if model is not None:
        raise ValueError("--image is required with a MODEL (the demo images suit only the demo).")
    return image_paths(None, None)[0]


def parse_dims(dims: str | None) -> list[int] | None:
    if dims is None:
        return None
    try:
        return [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--dims must be comma-separated integers, got {dims!r}.") from None


def calibration(loaded: Any, paths: list[Path], prompt: str) -> list[Any]:
    from analysis.tokens import build_inputs

    return [build_inputs(loaded, path, prompt) for path in paths]


def resolve_dims(
    loaded: Any, dims: str | None, batches: list[Any], registry_only: bool = False
) -> list[int]:
    from analysis.dims import sink_dims

    explicit = parse_dims(dims)
    if explicit is not None:
        return sink_dims(loaded, dims=explicit)
    return sink_dims(loaded, batches, registry_only=registry_only)


def bench_items(
    benchmark: str,
    *,
    questions: Path | None,
    images: Path | None,
    tsv: Path | None,
    hf: Path | None,
    answer_file: Path | None,
    decode_dir: Path,
) -> tuple[list[Any], dict[str, Any]]:
    """Benchmark items from one source: --tsv, --hf, or --questions (+ --answer-file)."""
    from analysis.scoring.readers import (
        BENCHMARKS,
        read_hf_folder,
        read_llava_questions,
        read_vlmeval_tsv,
    )

    if benchmark not in BENCHMARKS:
        raise ValueError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}.")
    given = [name for name, v in (("--tsv", tsv), ("--hf", hf), ("--questions", questions)) if v]
    if len(given) != 1:
        raise ValueError("--benchmark needs exactly one of --tsv, --hf or --questions.")
    source: dict[str, Any] = {"format": given[0].removeprefix("--"), "benchmark": benchmark}
    if tsv is not None:
        items = read_vlmeval_tsv(tsv, benchmark=benchmark, decode_dir=decode_dir, image_root=images)
        return items, source | {"tsv": str(tsv), "images": None if images is None else str(images)}
    if hf is not None:
        return read_hf_folder(hf, benchmark=benchmark, decode_dir=decode_dir), source | {
            "hf": str(hf)
        }
    if images is None:
        raise ValueError("--images (the image folder) is required with --questions.")
    assert questions is not None
    items = read_llava_questions(questions, images, benchmark=benchmark, answers=answer_file)
    return items, source | {
        "questions": str(questions),
        "images": str(images),
        "answer_file": None if answer_file is None else str(answer_file),
    }


def dataset_items(
    model: str | None,
    questions: Path | None,
    images: Path | None,
    prompt: str | None,
    bench: dict[str, Any] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Items from --questions + --images, or an image folder + --prompt; the demo set by default.

    With ``bench`` (``benchmark``, ``tsv``, ``hf``, ``answer_file``, ``decode_dir``) the
    benchmark's reader is used instead.
    """
    from analysis.datasets import image_folder, read_pope

    if bench is not None and bench.get("benchmark") is not None:
        if prompt is not None:
            raise ValueError("--prompt is for image folders; benchmark files carry their text.")
        return bench_items(questions=questions, images=images, **bench)
    if bench is not None and any(bench.get(k) for k in ("tsv", "hf", "answer_file")):
        raise ValueError("--tsv, --hf and --answer-file need --benchmark.")
    if questions is None and images is None:
        if model is not None:
            raise ValueError("--questions and --images are required with a MODEL.")
        questions, images = demo_dir() / "questions.jsonl", demo_dir() / "images"
    if images is None:
        raise ValueError("--images (the image folder) is required with --questions.")
    if questions is not None:
        if prompt is not None:
            raise ValueError("--prompt is for image folders; --questions carry their own text.")
        items = read_pope(questions, images)
        return items, {"format": "pope", "questions": str(questions), "images": str(images)}
    if prompt is None:
        raise ValueError("An image folder needs --prompt (or pass --questions).")
    return image_folder(images, prompt), {
        "format": "folder",
        "images": str(images),
        "prompt": prompt,
    }


def split_answers(answers: str) -> list[str]:
    return [a.strip() for a in answers.split(",") if a.strip()]
