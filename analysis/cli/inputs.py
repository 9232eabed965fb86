"""The commands' inputs, resolved and checked before any model is loaded.

The model path, image files, ``--dims``, answers, a benchmark's or a dataset's
items, and the output files (checked writable up front).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from analysis.cli.tables import console
from analysis.errors import UserInputError


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
    *,
    allow_unknown_config: bool = False,
) -> Any:
    """Load MODEL (the demo model when None) with a status line.

    ``allow_unknown_config`` (``--allow-unknown-config``) lets a config with keys the
    family does not list load; without it such a config is refused in one line.

    Commands call it as ``analysis.cli.load`` (looked up per call), so a caller
    can replace the loader once for every command, as the tests do.
    """
    from analysis.loading import load_model
    from analysis.tokens import MAX_LENGTH_KEY

    path = resolve_model_path(model)
    with console.status(f"loading {escape(path)}"):
        loaded = load_model(
            path,
            device=device,
            dtype=dtype,
            device_map=device_map,
            allow_unknown_config=allow_unknown_config,
        )
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
        raise UserInputError(
            "--images is required with a MODEL (the demo images suit only the demo)."
        )
    else:
        found = collect_images(demo_dir() / "images")
    check_images(found)
    return found


def single_image(image: Path | None, model: str | None) -> Path:
    """The given image file, or the first demo image when running on the demo model."""
    if image is not None:
        if image.is_dir():
            raise UserInputError(f"--image takes one image file; {image} is a folder.")
        return image_paths([image], model)[0]
    if model is not None:
        raise UserInputError(
            "--image is required with a MODEL (the demo images suit only the demo)."
        )
    return image_paths(None, None)[0]


def parse_dims(dims: str | None) -> list[int] | None:
    if dims is None:
        return None
    try:
        return [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise UserInputError(f"--dims must be comma-separated integers, got {dims!r}.") from None


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
    data: Path | None = None,
    format: str | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Benchmark items from one source: --tsv, --hf, --questions (+ --answer-file) or --data.

    The reader comes from the registry (:func:`analysis.scoring.readers.read_dataset`),
    which checks the benchmark and the other options against what the reader uses.
    """
    from analysis.scoring.readers import BENCHMARKS, read_dataset

    if benchmark not in BENCHMARKS:
        raise UserInputError(
            f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}."
        )
    if format is not None and data is None:
        raise UserInputError("--format names the reader of --data; pass --data.")
    # Each source option names its reader (--data: --format, else its suffix).
    sources = (("tsv", tsv), ("hf", hf), ("llava", questions), (format, data))
    given = [(fmt, path) for fmt, path in sources if path is not None]
    if len(given) != 1:
        raise UserInputError("--benchmark needs exactly one of --tsv, --hf, --questions or --data.")
    fmt, source = given[0]
    if questions is not None and images is None:
        raise UserInputError("--images (the image folder) is required with --questions.")
    dataset = read_dataset(
        source,
        format=fmt,
        benchmark=benchmark,
        images=images,
        decode_dir=decode_dir,
        answers=answer_file,
    )
    return list(dataset.items), dataset.describe()


def dataset_items(
    model: str | None,
    questions: Path | None,
    images: Path | None,
    prompt: str | None,
    bench: dict[str, Any] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Items from --questions + --images, or an image folder + --prompt; the demo set by default.

    With ``bench`` (``benchmark``, ``tsv``, ``hf``, ``data``, ``format``, ``answer_file``,
    ``decode_dir``) a benchmark's reader, or the reader of ``--data``, is used instead.
    Every source is read through :func:`analysis.scoring.readers.read_dataset`.
    """
    from analysis.scoring.readers import read_dataset

    bench = bench or {}
    if bench.get("benchmark") is not None:
        if prompt is not None:
            raise UserInputError("--prompt is for image folders; benchmark files carry their text.")
        return bench_items(questions=questions, images=images, **bench)
    if any(bench.get(k) is not None for k in ("tsv", "hf", "answer_file")):
        raise UserInputError("--tsv, --hf and --answer-file need --benchmark.")
    if bench.get("data") is not None:
        if questions is not None:
            raise UserInputError("Pass either --data or --questions, not both.")
        # decode_dir is offered, not imposed: a reader that stores no images ignores it.
        dataset = read_dataset(
            bench["data"],
            format=bench.get("format"),
            images=images,
            prompt=prompt,
            decode_dir=bench.get("decode_dir"),
        )
        return list(dataset.items), dataset.describe()
    if bench.get("format") is not None:
        raise UserInputError("--format names the reader of --data; pass --data.")
    if questions is None and images is None:
        if model is not None:
            raise UserInputError("--questions and --images are required with a MODEL.")
        questions, images = demo_dir() / "questions.jsonl", demo_dir() / "images"
    if images is None:
        raise UserInputError("--images (the image folder) is required with --questions.")
    if questions is not None:
        if prompt is not None:
            raise UserInputError("--prompt is for image folders; --questions carry their own text.")
        dataset = read_dataset(questions, format="pope", images=images)
    else:
        if prompt is None:
            raise UserInputError("An image folder needs --prompt (or pass --questions).")
        dataset = read_dataset(images, format="folder", prompt=prompt)
    return list(dataset.items), dataset.describe()


def split_answers(answers: str) -> list[str]:
    return [a.strip() for a in answers.split(",") if a.strip()]
