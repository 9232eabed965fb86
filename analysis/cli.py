"""The ``vsink`` command line.

Every command takes an optional MODEL (HF id or local folder; the bundled
synthetic demo model when omitted), ``--device`` and ``--dtype``, and writes
its results with the configuration that produced them when ``--json`` is given.
Errors the user can fix are printed as one clear line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="vsink",
    help="Visual attention sinks in large multimodal models: dims, sinks, heads, ablations, VAR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelArg = Annotated[
    str | None,
    typer.Argument(help="HF id or local folder; defaults to the bundled synthetic demo model."),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if available).")
]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 (default), bfloat16 or float16.")]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        help="Longest prompt in tokens (default: the model's max_position_embeddings; "
        "longer prompts are refused)."
    ),
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        help="HF device map (e.g. auto) for models too big for one GPU; not with --device."
    ),
]


def _user_errors() -> tuple[type[BaseException], ...]:
    from analysis.errors import VsinkError
    from analysis.loading import ModelLoadError
    from analysis.tokens import GeometryError, ImageError

    return (VsinkError, ModelLoadError, ImageError, GeometryError, ValueError, FileNotFoundError)


# Exit codes: 2 for an error the user can fix, 128 + signal number when stopped by a signal.
EXIT_USER_ERROR = 2
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs (locks released, parts kept)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _interrupted_line(err: KeyboardInterrupt) -> str:
    from analysis.evaluation import RunInterrupted

    if isinstance(err, RunInterrupted):
        return (
            f"interrupted: {err.written} records written ({err.present} in {err.run}), "
            "rerun the same command to resume"
        )
    return "interrupted"


def _show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected user errors into one red line and exit code 2.

    File-system faults (disk full, read-only, a folder where a file goes) are
    one line too. SIGINT and SIGTERM print one ``interrupted`` line (with the
    records kept, for a run) and exit 130 / 143. Warnings print as one line.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from analysis.fsio import describe_os_error

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except _user_errors() as err:
            # soft_wrap: a long message stays one line instead of being wrapped at 80 columns.
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except OSError as err:
            err_console.print(
                f"[bold red]error:[/] {escape(describe_os_error(err))}", soft_wrap=True
            )
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except KeyboardInterrupt as err:
            err_console.print(escape(_interrupted_line(err)), soft_wrap=True)
            stopped_by = err.__cause__ if err.__cause__ is not None else err
            code = EXIT_SIGTERM if isinstance(stopped_by, Terminated) else EXIT_SIGINT
            raise typer.Exit(code=code) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


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


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    from analysis.fsio import write_atomic

    if path is None:
        return
    write_atomic(path, json.dumps(payload, indent=2))
    console.print(f"wrote {escape(str(path))}")


@app.command()
@friendly
def info(
    model: ModelArg = None,
    image: Annotated[
        Path | None, typer.Option(help="Image for the token layout (default: a gray 336x336).")
    ] = None,
    prompt: Annotated[
        str, typer.Option(help="Prompt for the token layout.")
    ] = "Describe the image.",
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
) -> None:
    """Architecture, sizes, image-token layout and known sink dims of MODEL."""
    from PIL import Image

    from analysis.checks import check_settings
    from analysis.dims import registry_entry
    from analysis.tokens import build_inputs, describe_layout

    check_settings(max_length=max_length)
    check_outputs(json_out=json_out)
    sample = (
        single_image(image, model)
        if image is not None
        else Image.new("RGB", (336, 336), (128, 128, 128))
    )
    loaded = load(model, device, dtype, max_length=max_length)
    inputs = build_inputs(loaded, sample, prompt)
    layout = describe_layout(inputs.layouts[0])
    known = registry_entry(loaded)
    summary = {**loaded.describe(), "layout": layout, "registry": known}
    table = Table(title=f"vsink info: {escape(loaded.name_or_path)}", show_header=False)
    for key in ("family", "architecture", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head"):
        table.add_row(key, escape(str(summary[key])))
    table.add_row("image token id", str(loaded.image_token_id))
    table.add_row("BOS", f"id {loaded.bos_token_id}, position {layout['bos_position']}")
    table.add_row(
        "tokens (sample)",
        f"{layout['n_positions']} total, {layout['n_visual']} visual "
        f"({layout['n_separators']} separators), {layout['n_queries_after_image']} text queries "
        "after the image",
    )
    for grid in layout["grids"]:
        newline = " + newline column" if grid["newline_column"] else ""
        table.add_row(
            f"grid image {grid['image']} tile {grid['tile']}",
            f"{escape(str(grid['name']))}: {grid['rows']} x {grid['cols']}{newline}",
        )
    table.add_row(
        "known sink dims",
        escape(f"{known['dims']} ({known['key']})")
        if known
        else "not in the registry (discover them)",
    )
    console.print(table)
    write_json(json_out, summary)


ImagesOpt = Annotated[
    list[Path] | None,
    typer.Option("--images", help="Image files or folders (default: the bundled demo images)."),
]
PromptOpt = Annotated[str, typer.Option(help="Text prompt (wrapped in the chat template).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write results + configuration here.")]
DimsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated sink dims (default: registry, else discovered).")
]


QuestionsOpt = Annotated[
    Path | None,
    typer.Option(help='JSONL questions {"question_id","image","text","label"} (POPE format).'),
]
ImageRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--images", help="Image folder; question image paths resolve inside it (and only there)."
    ),
]
BenchmarkOpt = Annotated[
    str | None,
    typer.Option(
        help="Score by a benchmark's rule: mme, mmbench, mmvp, cv_bench, pope, choice "
        "(with --tsv or --hf), vqa, gqa (with --questions + --answer-file, or --tsv)."
    ),
]
TsvOpt = Annotated[
    Path | None, typer.Option(help="A VLMEvalKit benchmark TSV (base64 images or paths).")
]
HfOpt = Annotated[
    Path | None,
    typer.Option("--hf", help="A local HF dataset / Parquet folder (lmms-eval's layout)."),
]
AnswerFileOpt = Annotated[
    Path | None,
    typer.Option(help="VQA/GQA: JSONL of question_id + answers (the human answers)."),
]
LimitOpt = Annotated[int | None, typer.Option(help="Evaluate only the first N items.")]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Take over the run folder's lock even if its owner seems alive."),
]
BatchOpt = Annotated[int, typer.Option(help="Items per forward pass (left-padded).")]
BootOpt = Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")]


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


@app.command()
@friendly
def dims(
    model: ModelArg = None,
    images: ImagesOpt = None,
    prompt: PromptOpt = "Describe the image.",
    min_ratio: Annotated[
        float, typer.Option(help="Peak / median ratio to count as massive.")
    ] = 100.0,
    min_abs: Annotated[float, typer.Option(help="Absolute floor on the peak (0 = off).")] = 0.0,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Discover massive-activation (sink) dimensions over a set of images."""
    from analysis.checks import check_settings
    from analysis.dims import DimThresholds, discover_dims

    thresholds = DimThresholds(min_ratio=min_ratio, min_abs=min_abs)
    check_settings(max_length=max_length)
    check_outputs(json_out=json_out)
    paths = image_paths(images, model)
    loaded = load(model, device, dtype, max_length=max_length)
    batches = calibration(loaded, paths, prompt)
    result = discover_dims(
        loaded,
        batches,
        thresholds=thresholds,
        warn=False,  # said below, on stderr, in full
    )
    table = Table(title=f"sink dims over {len(paths)} images")
    for column in ("dim", "score", "peak/median BOS", "visual", "text"):
        table.add_column(column)
    for row in result.per_dim() or result.per_dim(result.top_dims(3)):
        table.add_row(
            str(row["dim"]),
            f"{row['score']:.2f}",
            f"{row['ratio_bos']:.0f}",
            f"{row['ratio_visual']:.0f}",
            f"{row['ratio_text']:.0f}",
        )
    console.print(table)
    console.print(f"dims: {result.dims}" + ("" if result.dims else " (none is massive; top shown)"))
    if not result.dims:
        err_console.print(f"[bold yellow]warning:[/] {result.explain_none()}", soft_wrap=True)
    if result.registry is not None:
        verdict = "agrees" if result.agrees_with_registry else "DISAGREES"
        console.print(
            escape(f"registry ({result.registry['key']}): {result.registry['dims']} -> {verdict}")
        )
        if not result.agrees_with_registry:
            err_console.print(
                f"[bold yellow]warning:[/] discovered {result.dims} differ from the registry's "
                f"{result.registry['dims']}; commands use the registry's unless --dims is given.",
                soft_wrap=True,
            )
    payload = result.to_json()
    payload["config"]["images"] = [str(p) for p in paths]
    write_json(json_out, payload)


@app.command()
@friendly
def sinks(
    model: ModelArg = None,
    image: Annotated[
        Path | None, typer.Option(help="Image file (default: the first demo image).")
    ] = None,
    prompt: PromptOpt = "Describe the image.",
    tau: Annotated[float, typer.Option(help="phi threshold for a sink token.")] = 20.0,
    dims: DimsOpt = None,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = None,
    html: Annotated[Path | None, typer.Option(help="Write an interactive sink map here.")] = None,
) -> None:
    """Classify sink tokens (phi >= tau) at every layer for one image."""
    import torch

    from analysis.checks import check_settings
    from analysis.plots import sink_overview, write_html
    from analysis.sinks import find_sinks

    check_settings(tau=tau, max_length=max_length)
    parse_dims(dims)  # a malformed --dims is refused before loading
    check_outputs(json_out=json_out, html=html)
    path = single_image(image, model)
    loaded = load(model, device, dtype, max_length=max_length)
    batches = calibration(loaded, [path], prompt)
    chosen = resolve_dims(loaded, dims, batches)
    result = find_sinks(loaded, batches[0], dims=chosen, tau=tau)
    summary = result.summary()
    table = Table(title=escape(f"sinks in {path.name} (dims {chosen}, tau {tau:g})"))
    for column in ("layer", "visual sinks", "text sinks", "BOS sink"):
        table.add_column(column)
    for row in summary["per_layer"]:
        table.add_row(
            str(row["layer"]),
            f"{row['visual_sinks_mean']:.0f}",
            f"{row['text_sinks_mean']:.0f}",
            "yes" if row["bos_is_sink"] else "no",
        )
    console.print(table)
    sample = summary["samples"][0]
    console.print(
        f"consensus (layers 2..L-1): {sample['visual_sinks_consensus']} of {sample['n_visual']} "
        f"visual tokens are sinks; text sinks: {escape(str(sample['text_sink_tokens']))}"
    )
    payload = result.to_json()
    payload["config"]["image"] = str(path)
    # Which tokens are sinks, per layer input: prompt positions and (row, col) on the grid.
    geometry = batches[0].layouts[0].geometry
    cells = {
        int(p): (int(r), int(c))
        for p, r, c in zip(geometry.positions, geometry.row, geometry.col, strict=True)
    }
    payload["sink_tokens"] = [
        {
            "layer": layer,
            "positions": torch.nonzero(result.is_sink()[0, layer]).flatten().tolist(),
            "visual_cells": [
                cells[p] for p in torch.nonzero(result.visual_sinks()[0, layer]).flatten().tolist()
            ],
            "phi": [round(float(v), 3) for v in result.phi[0, layer]],
        }
        for layer in range(result.n_layers)
    ]
    write_json(json_out, payload)
    if html is not None:
        console.print(f"wrote {escape(str(write_html(sink_overview(result), html)))}")


@app.command()
@friendly
def generate(
    model: ModelArg = None,
    image: Annotated[Path | None, typer.Option(help="Image file (default: a demo image).")] = None,
    prompt: PromptOpt = "Is there a red object in the image?",
    var: Annotated[bool, typer.Option("--var", help="Also generate with VAR.")] = False,
    preset: Annotated[
        str, typer.Option(help="VAR preset: paper (default) or official (the authors' code).")
    ] = "paper",
    p: Annotated[
        float | None,
        typer.Option(help="VAR p (default 0.6): paper preset moves p, official keeps p."),
    ] = None,
    rho: Annotated[
        float | None,
        typer.Option(help="VAR rho (default 0.5): paper min r, official max sink fraction."),
    ] = None,
    tau: Annotated[float | None, typer.Option(help="phi threshold (default 20).")] = None,
    dims: DimsOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 16,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Greedy answer for IMAGE + PROMPT; with --var, the baseline and the VAR answer."""
    from analysis.checks import check_settings
    from analysis.generation import generate as run_generate
    from analysis.results import provenance
    from analysis.var import VarConfig, VarIntervention

    # Every setting is checked before loading: --var --p 1.5 never generates a baseline.
    check_settings(max_new_tokens=max_new_tokens, max_length=max_length)
    given = {"p": p, "rho": rho, "tau": tau}
    overrides = {k: v for k, v in given.items() if v is not None}
    config = VarConfig.preset(preset, **overrides) if var else None
    parse_dims(dims)
    check_outputs(json_out=json_out)
    path = single_image(image, model)
    loaded = load(model, device, dtype, max_length=max_length)
    inputs = calibration(loaded, [path], prompt)[0]
    # Refuse before any work when VAR has no sink dims to use.
    chosen = (
        resolve_dims(loaded, dims, [inputs], config.registry_dims) if config is not None else None
    )
    baseline = run_generate(loaded, inputs, max_new_tokens=max_new_tokens)
    payload: dict[str, Any] = {
        "baseline": baseline.texts[0],
        "config": {
            "model": loaded.describe(),
            "image": str(path),
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            **provenance(),
        },
    }
    console.print(f"[bold]baseline:[/] {escape(baseline.texts[0])}")
    if config is not None:
        intervention = VarIntervention(loaded, inputs, dims=chosen, config=config)
        answer = run_generate(
            loaded, inputs, max_new_tokens=max_new_tokens, fwd_hooks=intervention.fwd_hooks()
        )
        record = intervention.record()
        console.print(f"[bold]VAR:[/]      {escape(answer.texts[0])}")
        console.print(
            f"VAR changed {record.total_changed} (layer, head, query) rows, moved "
            f"{record.total_mass:.3f} attention mass over layers {record.layers[0]}.."
            f"{record.layers[-1]}"
            + (
                " [yellow](no-op: no image-centric rows with visual sinks)[/]"
                if record.total_changed == 0
                else ""
            )
        )
        payload.update(var=answer.texts[0], var_record=record.to_json(), dims=chosen)
        payload["config"]["var"] = config.to_dict()
    write_json(json_out, payload)


@app.command()
@friendly
def heads(
    model: ModelArg = None,
    images: ImagesOpt = None,
    prompt: PromptOpt = "Is there a red object in the image?",
    rho: Annotated[
        float | None, typer.Option(help="Minimum visual non-sink ratio (default 0.5).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Paper preset: general, hallucination, vision-centric.")
    ] = None,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    dims: DimsOpt = None,
    top: Annotated[int, typer.Option(help="Heads to list.")] = 10,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = None,
    csv: Annotated[Path | None, typer.Option(help="Write every head's scores as CSV.")] = None,
) -> None:
    """Score heads by image attention and visual non-sink ratio; list image-centric heads."""
    from analysis.checks import check_settings
    from analysis.heads import resolve_rho, score_heads

    resolve_rho(rho, preset)
    check_settings(tau=tau, top=top, max_length=max_length)
    parse_dims(dims)
    check_outputs(json_out=json_out, csv=csv)
    paths = image_paths(images, model)
    loaded = load(model, device, dtype, max_length=max_length)
    batches = calibration(loaded, paths, prompt)
    chosen = resolve_dims(loaded, dims, batches)
    result = score_heads(loaded, batches, dims=chosen, tau=tau, rho=rho, preset=preset)
    table = Table(title=f"heads over {len(paths)} images (rho {result.rho:g}, s >= 0.2)")
    for column in ("layer", "head", "selected", "s mean [95% CI]", "r mean [95% CI]"):
        table.add_column(column)
    for row in result.ranked(top=top):
        table.add_row(
            str(row["layer"]),
            str(row["head"]),
            f"{row['selected_mean']:.2f}",
            f"{row['s_mean']:.2f} [{row['s_lo']:.2f}, {row['s_hi']:.2f}]",
            f"{row['r_mean']:.2f} [{row['r_lo']:.2f}, {row['r_hi']:.2f}]",
        )
    console.print(table)
    console.print(
        f"image-centric heads (selected for >= half the queries): {result.image_centric_heads()}"
    )
    payload = result.to_json()
    payload["config"]["images"] = [str(p) for p in paths]
    write_json(json_out, payload)
    if csv is not None:
        result.to_csv(str(csv))
        console.print(f"wrote {escape(str(csv))}")


@app.command()
@friendly
def ablate(
    model: ModelArg = None,
    image: Annotated[Path | None, typer.Option(help="Image file (default: a demo image).")] = None,
    prompt: PromptOpt = "Is there a red object in the image?",
    target: Annotated[
        list[str] | None,
        typer.Option(help="sinks, random, nonsink, visual or positions (repeatable)."),
    ] = None,
    answers: Annotated[str, typer.Option(help="Comma-separated candidate answers.")] = "yes,no",
    draws: Annotated[int, typer.Option(help="Random draws for target=random.")] = 5,
    mode: Annotated[
        str, typer.Option(help="pre (renormalise) or post (zero, no renormalise).")
    ] = "pre",
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layers (default all).")
    ] = None,
    positions: Annotated[
        str | None, typer.Option(help="Key positions for target=positions.")
    ] = None,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    dims: DimsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the random draws.")] = 0,
    questions: QuestionsOpt = None,
    images: ImageRootOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Dataset mode: run folder (default vsink-runs/ablate-<questions>)."),
    ] = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 1,
    max_new_tokens: Annotated[
        int, typer.Option(help="Dataset mode: also generate this many tokens (0: log-probs only).")
    ] = 0,
    n_boot: BootOpt = 1000,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Knock out attention to sink tokens (or controls) and compare with the unablated run.

    With --questions (JSONL, POPE format) the knock-outs run over the dataset:
    accuracy of each condition with bootstrap CIs, paired tests against the
    baseline and the mean change of log p(label), in a resumable run folder.
    """
    from analysis.ablation import ablate as run_ablate
    from analysis.checks import check_choice, check_settings

    check_settings(
        tau=tau,
        draws=draws,
        seed=seed,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        n_boot=n_boot,
        max_length=max_length,
    )
    check_choice("--mode", mode, ("pre", "post"))
    parse_dims(dims)
    parse_dims(layers)
    check_outputs(json_out=json_out)
    if questions is not None:
        _ablate_dataset(
            model,
            questions=questions,
            images=images,
            targets=target or ["sinks", "random"],
            answers=answers,
            draws=draws,
            mode=mode,
            layers=layers,
            tau=tau,
            dims=dims,
            seed=seed,
            out=out,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            n_boot=n_boot,
            device=device,
            dtype=dtype,
            device_map=device_map,
            max_length=max_length,
            force=force,
            json_out=json_out,
        )
        return
    if images is not None:
        raise ValueError("--images is for dataset mode (with --questions); use --image.")
    parse_dims(positions)
    path = single_image(image, model)
    loaded = load(model, device, dtype, device_map, max_length=max_length)
    inputs = calibration(loaded, [path], prompt)[0]
    chosen_targets = target or ["sinks", "random"]
    needs_dims = any(t in ("sinks", "random", "nonsink") for t in chosen_targets)
    chosen = resolve_dims(loaded, dims, [inputs]) if needs_dims else None
    result = run_ablate(
        loaded,
        inputs,
        targets=cast(Any, chosen_targets),  # checked against TARGETS by ablate()
        answers=split_answers(answers),
        dims=chosen,
        tau=tau,
        mode=cast(Any, mode),  # checked by KnockOut
        layers=parse_dims(layers),
        positions=parse_dims(positions),
        draws=draws,
        seed=seed,
    )
    table = Table(title=escape(f"knock-out on {path.name} ({mode}-softmax)"))
    for column in ("condition", escape(f"log p({result.answers[0]})"), "delta", "KL", "greedy"):
        table.add_column(column)
    delta = result.delta_logprob()
    for i, name in enumerate(result.conditions):
        table.add_row(
            escape(name),
            f"{float(result.answer_logprob[i, 0, 0]):.3f}",
            f"{float(delta[i, 0]):+.3f}",
            f"{float(result.kl[i, 0]):.4f}",
            escape(result.greedy[i][0]),
        )
    console.print(table)
    payload = result.to_json()
    payload["config"]["image"] = str(path)
    write_json(json_out, payload)


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


def describe_run(result: Any) -> str:
    summary = result.summary()
    n_conditions = len(summary.get("conditions", {}))
    return (
        f"{summary.get('n_items', '?')} items x {n_conditions} conditions, "
        f"{len(result.records)} records"
    )


def run_evaluation(
    model: str | None,
    questions: Path | None,
    images: Path | None,
    prompt: str | None,
    *,
    device: str | None,
    dtype: str | None,
    device_map: str | None,
    max_length: int | None = None,
    force: bool = False,
    bench: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Any, Any]:
    """Check every setting, read the dataset (every image decoded) and lock the run folder,
    then join the torchrun group (if any), load the model and evaluate."""
    from analysis.checks import check_known, check_settings
    from analysis.evaluation import (
        LOCK,
        evaluate,
        init_distributed,
        parse_conditions,
        rank_device,
        shard_from_env,
    )
    from analysis.fsio import check_output_dir, exclusive_lock

    check_known(options)
    check_settings(max_length=max_length)
    parse_conditions(
        options["conditions"], **{k: options[k] for k in ("tau", "rho") if k in options}
    )
    run = check_output_dir(options["out"], "--out")
    if bench is not None:
        from analysis.evaluation import DECODED

        bench = dict(bench, decode_dir=run / DECODED)
    items, source = dataset_items(model, questions, images, prompt, bench)
    # Rank 0 locks before loading, so a second run on the folder is refused at once;
    # evaluate() finds the lock its own and keeps it.
    locked = exclusive_lock(run / LOCK, force=force) if shard_from_env().is_main else None
    with locked or contextlib.nullcontext():
        shard = init_distributed()
        loaded = load(model, rank_device(device, shard), dtype, device_map, max_length)
        return shard, evaluate(loaded, items, dataset=source, force=force, shard=shard, **options)


def _ci(entry: dict[str, float] | None, spec: str = ".3f") -> str:
    """``value [lo, hi]`` in one format spec (``+.2g`` for small changes)."""
    if entry is None:
        return "-"
    return f"{entry['value']:{spec}} [{entry['lo']:{spec}}, {entry['hi']:{spec}}]"


def print_wide(table: Table) -> None:
    """A terminal gets its own width; a pipe or log gets long lines instead of wrapped cells."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, 160)).print(table)


def print_benchmark(bench: dict[str, Any], title: str, level: int) -> None:
    """One table per scoring: each headline metric with its CI, the paired difference against
    the reference condition (the baseline) with its CI, and McNemar's p."""
    from analysis.scoring.runs import headline

    for scoring, label in (("logprob", "option log-prob"), ("generate", "generation")):
        entry = bench.get(scoring)
        if not entry:
            continue
        reference = bench["reference"]
        first = next(iter(entry["conditions"].values()))["metrics"]
        keys = headline(first)
        table = Table(
            title=f"{title}: {bench['name']} scored by {label}, {entry['n_items']} questions in "
            f"{entry['n_units']} units ({level}% bootstrap CIs)"
        )
        table.add_column("condition")
        for key in keys:
            table.add_column(escape(key))
            table.add_column(escape(f"Δ {key} vs {reference}"))
        table.add_column("McNemar p")
        for name, item in entry["conditions"].items():
            cells = [escape(name)]
            for key in keys:
                versus = item.get("vs_reference", {}).get(key)
                cells += [_ci(item["metrics"].get(key), ".2f"), _ci(versus, "+.2f")]
            mcnemar = item.get("mcnemar")
            cells.append("-" if mcnemar is None else f"{mcnemar['p']:.3g}")
            table.add_row(*cells)
        print_wide(table)


def print_summary(summary: dict[str, Any], title: str) -> None:
    """One table per scoring (log-prob, generation), then sinks, heads and VAR lines."""
    from analysis.evaluation import summary_rows

    level = round(100 * summary["bootstrap"]["level"])
    print_benchmark(summary.get("benchmark") or {}, title, level)
    for scoring, label in (("logprob", "answer log-prob"), ("generate", "generation")):
        rows = summary_rows(summary, scoring)
        if not rows:
            continue
        table = Table(title=f"{title}: scored by {label} ({level}% bootstrap CIs)")
        for column in (
            "condition",
            "n",
            "accuracy",
            "precision",
            "recall",
            "F1",
            "yes",
            "Δ accuracy",
            "McNemar p",
            "Δ log p(label)",
        ):
            table.add_column(column)
        for row in rows:
            table.add_row(
                escape(row["condition"]),
                str(row["n"]),
                _ci(row["accuracy"]),
                f"{row['precision']['value']:.3f}",
                f"{row['recall']['value']:.3f}",
                _ci(row["f1"]),
                f"{row['yes_ratio']['value']:.3f}",
                _ci(row["delta_accuracy"], "+.3f"),
                "-" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.3g}",
                _ci(row["delta_logprob"], "+.2g"),
            )
        print_wide(table)
    if not summary.get("benchmark") and not any(
        summary_rows(summary, s) for s in ("logprob", "generate")
    ):
        console.print("no labelled items: records hold the answers, no accuracy to report")
    if "sinks" in summary:
        means = ", ".join(f"{v:.1f}" for v in summary["sinks"]["per_layer_mean"])
        console.print(
            f"visual sinks per image by layer (mean over {len(summary['sinks']['per_image'])} "
            f"images): {means}"
        )
    if "heads" in summary:
        console.print(
            escape(f"image-centric heads (layer, head): {summary['heads']['image_centric']}")
        )
    for name, entry in summary["conditions"].items():
        if "var" in entry:
            var = entry["var"]
            console.print(
                f"{escape(name)}: {var['rows_changed_mean']:.1f} rows changed and "
                f"{var['mass_moved_mean']:.3f} attention mass moved per item; "
                f"no-op on {var['noop_items']} items"
            )
    if not summary["complete"]:
        expected = summary.get("n_items_expected", summary["n_items"])
        console.print(
            f"[yellow]partial: {summary['n_items']} of {expected} items present, some "
            "conditions lack some items (rerun the same command to resume)[/]"
        )


@app.command("eval")
@friendly
def eval_(
    model: ModelArg = None,
    questions: QuestionsOpt = None,
    images: ImageRootOpt = None,
    prompt: Annotated[
        str | None, typer.Option(help="Image-folder mode: the prompt for every image.")
    ] = None,
    conditions: Annotated[
        str,
        typer.Option(
            help="Comma-separated: baseline, var[:p=..,rho=..], ablate-sinks, "
            "ablate-random[:draws=K], ablate-nonsink, ablate-visual."
        ),
    ] = "baseline,var,ablate-sinks,ablate-random",
    out: Annotated[Path, typer.Option(help="Run folder (required; resumed when it exists).")] = ...,  # type: ignore[assignment]
    benchmark: BenchmarkOpt = None,
    tsv: TsvOpt = None,
    hf: HfOpt = None,
    answer_file: AnswerFileOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 1,
    answers: Annotated[
        str, typer.Option(help="Candidate answers; the first is the positive class.")
    ] = "yes,no",
    max_new_tokens: Annotated[
        int, typer.Option(help="Greedy generation length (0: score by log-probs only).")
    ] = 8,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    rho: Annotated[
        float, typer.Option(help="Minimum visual non-sink ratio (heads, VAR default).")
    ] = 0.5,
    preset: Annotated[
        str, typer.Option(help="VAR preset of var conditions: paper (default) or official.")
    ] = "paper",
    dims: DimsOpt = None,
    calibration_items: Annotated[
        int, typer.Option(help="Distinct images used to discover sink dims when needed.")
    ] = 8,
    stats: Annotated[
        bool, typer.Option(help="Collect sink counts and head scores in the baseline pass.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of random knock-outs and the bootstrap.")] = 0,
    n_boot: BootOpt = 1000,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    progress_bar: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    force: ForceOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Evaluate conditions over a dataset: resumable, shardable with torchrun, with CIs.

    With --benchmark the items are scored by that benchmark's rule (MME accuracy+ and
    perception/cognition, MMBench circular, MMVP pairs, CV-Bench overall, VQA accuracy,
    GQA exact match), with CIs and paired differences against the baseline.
    """
    check_outputs(json_out=json_out)
    shard, result = run_evaluation(
        model,
        questions,
        images,
        prompt,
        device=device,
        dtype=dtype,
        device_map=device_map,
        max_length=max_length,
        force=force,
        bench={"benchmark": benchmark, "tsv": tsv, "hf": hf, "answer_file": answer_file},
        out=out,
        conditions=conditions,
        answers=split_answers(answers),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        dims=parse_dims(dims),
        tau=tau,
        rho=rho,
        var_preset=preset,
        seed=seed,
        collect_stats=stats,
        n_calibration=calibration_items,
        n_boot=n_boot,
        show_progress=progress_bar,
    )
    if shard.is_main:
        print_summary(result.summary(), escape(f"vsink eval ({describe_run(result)})"))
        console.print(
            f"run folder: {escape(str(out))} (records.jsonl, summary.json, manifest.json)"
        )
        write_json(json_out, result.summary())


def _ablate_dataset(
    model: str | None,
    *,
    questions: Path,
    images: Path | None,
    targets: list[str],
    answers: str,
    draws: int,
    mode: str,
    layers: str | None,
    tau: float,
    dims: str | None,
    seed: int,
    out: Path | None,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    n_boot: int,
    device: str | None,
    dtype: str | None,
    device_map: str | None,
    max_length: int | None,
    force: bool,
    json_out: Path | None,
) -> None:
    """``vsink ablate --questions``: baseline + knock-outs on the evaluation runner."""
    if "positions" in targets:
        raise ValueError("target=positions is per prompt; over a dataset use the other targets.")
    options = [f"mode={mode}"] if mode != "pre" else []
    chosen_layers = parse_dims(layers)
    if chosen_layers:
        options.append("layers=" + "+".join(str(x) for x in chosen_layers))
    specs = ["baseline"]
    for target in targets:
        extra = options + ([f"draws={draws}"] if target == "random" and draws > 1 else [])
        specs.append(f"ablate-{target}" + (":" + ",".join(extra) if extra else ""))
    run = out or Path("vsink-runs") / f"ablate-{questions.stem}"
    shard, result = run_evaluation(
        model,
        questions,
        images,
        None,
        device=device,
        dtype=dtype,
        device_map=device_map,
        max_length=max_length,
        force=force,
        out=run,
        conditions=specs,
        answers=split_answers(answers),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        dims=parse_dims(dims),
        tau=tau,
        seed=seed,
        collect_stats=False,
        n_boot=n_boot,
    )
    if not shard.is_main:
        return
    summary = result.summary()
    level = round(100 * summary["bootstrap"]["level"])
    table = Table(title=f"knock-out over {summary['n_items']} items ({mode}-softmax, {level}% CIs)")
    for column in (
        "condition",
        "n",
        "accuracy",
        "Δ accuracy",
        "McNemar p",
        "Δ log p(label)",
        "Δ log-odds(label)",
    ):
        table.add_column(column)
    for name, entry in summary["conditions"].items():
        scored = entry.get("logprob")
        if scored is None:
            continue
        versus = scored.get("vs_baseline")
        table.add_row(
            escape(name),
            str(scored["n"]),
            _ci(scored["accuracy"]),
            _ci(versus["delta_accuracy"], "+.3f") if versus else "-",
            f"{versus['mcnemar']['p']:.3g}" if versus else "-",
            _ci(entry.get("delta_logprob_label"), "+.2g"),
            _ci(entry.get("delta_margin_label"), "+.3f"),
        )
    print_wide(table)
    console.print(f"run folder: {escape(str(run))} (per-item records.jsonl, summary.json)")
    write_json(json_out, summary)


@app.command()
@friendly
def sweep(
    model: ModelArg = None,
    grid: Annotated[
        str,
        typer.Option(help="VAR settings: p=0.2:0.8:0.2,rho=0.3,0.5,0.8 (ranges inclusive)."),
    ] = "p=0.2:0.8:0.2,rho=0.5,0.8",
    base: Annotated[
        str, typer.Option(help="The condition each point extends: var, var-to-text, ...")
    ] = "var",
    out: Annotated[Path, typer.Option(help="Run folder (required; resumed when it exists).")] = ...,  # type: ignore[assignment]
    questions: QuestionsOpt = None,
    images: ImageRootOpt = None,
    benchmark: BenchmarkOpt = None,
    tsv: TsvOpt = None,
    hf: HfOpt = None,
    answer_file: AnswerFileOpt = None,
    metric: Annotated[
        str | None,
        typer.Option(help="Metric to plot (default: accuracy, or the benchmark's total)."),
    ] = None,
    scoring: Annotated[str, typer.Option(help="logprob or generate.")] = "logprob",
    x: Annotated[str, typer.Option("--x", help="Setting on the x axis: p or rho.")] = "p",
    limit: LimitOpt = None,
    batch_size: BatchOpt = 1,
    max_new_tokens: Annotated[
        int, typer.Option(help="Greedy generation length (0: score by log-probs only).")
    ] = 0,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    dims: DimsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of random heads and the bootstrap.")] = 0,
    n_boot: BootOpt = 1000,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
    progress_bar: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    force: ForceOpt = False,
) -> None:
    """A grid of VAR settings over one item set in one resumable run, and its figure.

    Writes OUT/sweep.html and OUT/sweep.png: the metric vs the setting with
    bootstrap CIs, one line per value of the other setting, the baseline as a band.
    """
    from analysis.checks import check_choice
    from analysis.sweep import grid_conditions, parse_grid

    check_choice("--scoring", scoring, ("logprob", "generate"))
    check_choice("--x", x, ("p", "rho"))
    specs = ["baseline", *grid_conditions(parse_grid(grid), base)]
    shard, result = run_evaluation(
        model,
        questions,
        images,
        None,
        device=device,
        dtype=dtype,
        device_map=device_map,
        max_length=max_length,
        force=force,
        bench={"benchmark": benchmark, "tsv": tsv, "hf": hf, "answer_file": answer_file},
        out=out,
        conditions=specs,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        dims=parse_dims(dims),
        tau=tau,
        seed=seed,
        collect_stats=False,
        n_boot=n_boot,
        show_progress=progress_bar,
    )
    if shard.is_main:
        print_summary(result.summary(), escape(f"vsink sweep ({describe_run(result)})"))
        for path in write_sweep_figure(out, metric=metric, scoring=scoring, x=x):
            console.print(f"wrote {escape(str(path))}")


def write_sweep_figure(run_dir: Path, *, metric: str | None, scoring: str, x: str) -> list[Path]:
    """OUT/sweep.html and OUT/sweep.png from a run's summary and manifest."""
    from analysis.evaluation import read_manifest
    from analysis.plots import sweep_figure, to_png, write_html
    from analysis.sweep import sweep_rows

    summary = json.loads((run_dir / "summary.json").read_text())
    rows = sweep_rows(summary, read_manifest(run_dir)["conditions"], metric=metric, scoring=scoring)
    fig = sweep_figure(rows, x=x)
    return [write_html(fig, run_dir / "sweep.html"), to_png(fig, run_dir / "sweep.png")]


@app.command()
@friendly
def summary(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by vsink eval / ablate.")],
    n_boot: Annotated[
        int | None, typer.Option(help="Bootstrap resamples (default: the run's).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary JSON here.")
    ] = None,
) -> None:
    """Table + JSON of a run, recomputed from its per-item records (also of a partial run)."""
    from analysis.checks import check_settings
    from analysis.evaluation import LOCK, SUMMARY, merge_run
    from analysis.fsio import read_lock

    if n_boot is not None:
        check_settings(n_boot=n_boot)
    check_outputs(json_out=json_out)
    result = merge_run(run_dir, n_boot=n_boot)
    print_summary(result.summary(), escape(f"{run_dir} ({describe_run(result)})"))
    writer = read_lock(run_dir / LOCK)
    if writer is not None and writer.running() is not False:
        console.print(
            f"[yellow]a run is still writing to this folder ({escape(writer.describe())}): "
            "these numbers are a snapshot[/]"
        )
    console.print(f"wrote {escape(str(run_dir / SUMMARY))}")
    write_json(json_out, result.summary())


@app.command()
@friendly
def chair(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by vsink eval (captions).")],
    instances: Annotated[
        Path, typer.Option(help="COCO instances_*.json holding the images' objects.")
    ] = ...,  # type: ignore[assignment]
    n_boot: BootOpt = 1000,
    json_out: JsonOpt = None,
) -> None:
    """CHAIR_i, CHAIR_s and recall of a run's generations, with CIs and paired differences.

    Generate the captions with e.g. ``vsink eval --images coco/val2014 --prompt "Please
    describe this image in detail." --max-new-tokens 512 --out RUN``.
    """
    from analysis.checks import check_settings
    from analysis.evaluation import load_records, read_manifest
    from analysis.scoring.chair import coco_objects
    from analysis.scoring.runs import chair_summary

    check_settings(n_boot=n_boot)
    check_outputs(json_out=json_out)
    manifest = read_manifest(run_dir)
    result = chair_summary(
        load_records(run_dir),
        coco_objects(instances),
        [c["name"] for c in manifest["conditions"]],
        n_boot=n_boot,
        seed=int(manifest["config"]["seed"]),
        level=0.95,
    )
    reference = result["reference"]
    table = Table(title=f"CHAIR over {result['n_captions']} captions (95% bootstrap CIs)")
    keys = ("chair_i", "chair_s", "recall")
    table.add_column("condition")
    for key in keys:
        table.add_column(key)
        table.add_column(f"Δ {key} vs {reference}")
    for name, entry in result["conditions"].items():
        cells = [escape(name)]
        for key in keys:
            versus = entry.get("vs_reference", {}).get(key)
            cells += [_ci(entry["metrics"][key], ".2f"), _ci(versus, "+.2f")]
        table.add_row(*cells)
    print_wide(table)
    write_json(json_out, result)


@app.command()
@friendly
def export(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by vsink eval.")],
    fmt: Annotated[str, typer.Option("--format", help="mm-vet, llava-wild or mmhal.")] = ...,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option(help="The judge's input file to write.")] = ...,  # type: ignore[assignment]
    condition: Annotated[str, typer.Option(help="Which condition's generations.")] = "baseline",
    template: Annotated[
        Path | None, typer.Option(help="mmhal: MMHal-Bench's response_template.json.")
    ] = None,
    model_id: Annotated[str, typer.Option(help="llava-wild: the model_id field.")] = "vsink",
) -> None:
    """Write a run's generations in an LLM judge's input format (MM-Vet, LLaVA-Wild, MMHal)."""
    from analysis.checks import check_choice
    from analysis.evaluation import load_records
    from analysis.fsio import write_atomic
    from analysis.scoring.export import JUDGE_FORMATS, export_judge

    check_choice("--format", fmt, tuple(JUDGE_FORMATS))
    check_outputs(out=out)
    entries = None
    if template is not None:
        try:
            entries = json.loads(template.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--template {template}: not a readable JSON file ({err}).") from None
        if not isinstance(entries, list):
            raise ValueError(f"--template {template}: expected a JSON list of entries.")
    text = export_judge(
        load_records(run_dir), fmt, condition=condition, model_id=model_id, template=entries
    )
    write_atomic(out, text)
    console.print(f"wrote {escape(str(out))} ({fmt}, condition {escape(condition)})")


@app.command()
@friendly
def merge(
    run_dir: Annotated[Path, typer.Argument(help="A folder written by vsink eval / ablate.")],
) -> None:
    """Merge the per-process parts of a run into records.jsonl and summary.json."""
    from analysis.evaluation import RECORDS, SUMMARY, merge_run

    result = merge_run(run_dir)
    parts = sorted(p.name for p in run_dir.glob("part-*.jsonl"))
    console.print(
        escape(
            f"merged {len(result.records)} records from {len(parts)} part(s) "
            f"({', '.join(parts)}) into {run_dir / RECORDS} and {run_dir / SUMMARY}"
        )
    )


@app.command()
@friendly
def contribution(
    model: ModelArg = None,
    images: ImagesOpt = None,
    prompt: PromptOpt = "Is there a red object in the image?",
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    dims: DimsOpt = None,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Residual contribution ||alpha_ij x_j W_OV|| of visual sinks vs other tokens (fig. 3c)."""
    from analysis.checks import check_settings
    from analysis.contribution import residual_contribution

    check_settings(tau=tau, max_length=max_length)
    parse_dims(dims)
    check_outputs(json_out=json_out)
    paths = image_paths(images, model)
    loaded = load(model, device, dtype, max_length=max_length)
    batches = calibration(loaded, paths, prompt)
    chosen = resolve_dims(loaded, dims, batches)
    results = [residual_contribution(loaded, b, dims=chosen, tau=tau) for b in batches]
    table = Table(title=f"per (text query, key) pair, mean over {len(paths)} images and heads")
    for column in ("key group", "contribution", "attention per key", "||x W_OV|| per key"):
        table.add_column(column)
    means = {
        name: {
            g: sum(r.group_mean(name)[g] for r in results) / len(results) for g in results[0].groups
        }
        for name in ("contribution", "attention", "value_norm")
    }
    for group in results[0].groups:
        table.add_row(
            escape(group),
            f"{means['contribution'][group]:.3g}",
            f"{means['attention'][group]:.3g}",
            f"{means['value_norm'][group]:.3g}",
        )
    console.print(table)
    write_json(
        json_out,
        {
            "kind": "contribution",
            "means": means,
            "images": [
                {"image": str(p), **r.to_json()} for p, r in zip(paths, results, strict=True)
            ],
        },
    )


@app.command()
@friendly
def figures(
    model: ModelArg = None,
    images: ImagesOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNG, HTML and JSON files.")] = Path(
        "figures"
    ),
    prompt: PromptOpt = "Is there a red object in the image?",
    answers: Annotated[
        str, typer.Option(help="Comma-separated answers scored by the knock-outs.")
    ] = "yes,no",
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    rho: Annotated[float, typer.Option(help="Minimum visual non-sink ratio (heads, VAR).")] = 0.5,
    p: Annotated[float, typer.Option(help="VAR: fraction of sink attention moved.")] = 0.6,
    dims: DimsOpt = None,
    focus: Annotated[
        int, typer.Option(help="Index of the image shown in the per-image figures.")
    ] = 0,
    layer: Annotated[
        int | None,
        typer.Option(help="Layer of figures 1, 2, 3d (default: top image-centric head's)."),
    ] = None,
    draws: Annotated[int, typer.Option(help="Random draws of the knock-out control.")] = 5,
    only: Annotated[
        list[str] | None, typer.Option(help="Only these figures (repeatable), e.g. fig5_var.")
    ] = None,
    scale: Annotated[float, typer.Option(help="PNG resolution, times the figure size.")] = 2.0,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Reproduce every paper figure: PNG + interactive HTML + the JSON each was drawn from."""
    import shlex
    import sys

    from analysis.checks import check_settings
    from analysis.figures import make_figures
    from analysis.fsio import check_output_dir
    from analysis.var import VarConfig

    VarConfig(p=p, rho=rho, tau=tau)
    check_settings(draws=draws, scale=scale, focus=focus, layer=layer, max_length=max_length)
    parse_dims(dims)
    check_output_dir(out, "--out")
    paths = image_paths(images, model)
    if focus >= len(paths):
        raise ValueError(f"--focus {focus}: there are {len(paths)} images (0..{len(paths) - 1}).")
    loaded = load(model, device, dtype, device_map, max_length=max_length)
    # Recorded in the folder's README; run as a console script, argv is the exact command.
    called = Path(sys.argv[0]).name == "vsink"
    command = shlex.join(["vsink", *sys.argv[1:]]) if called else f"vsink figures --out {out}"
    result = make_figures(
        loaded,
        paths,
        out,
        prompt=prompt,
        answers=split_answers(answers),
        dims=parse_dims(dims),
        tau=tau,
        rho=rho,
        p=p,
        focus=focus,
        layer=layer,
        draws=draws,
        names=only,
        scale=scale,
        command=command,
    )
    for item in result.figures:
        console.print(escape(f"{item.spec.paper:>32}  {out / item.spec.name}.{{png,html,json}}"))
    console.print(
        escape(f"wrote {len(result.figures)} figures to {out} (index: {out / 'index.html'})")
    )


@app.command()
@friendly
def report(
    model: ModelArg = None,
    image: Annotated[
        Path | None, typer.Option(help="Image file (default: the first demo image).")
    ] = None,
    prompt: PromptOpt = "Is there a red object in the image?",
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    answers: Annotated[
        str, typer.Option(help="Comma-separated answers scored by the knock-outs.")
    ] = "yes,no",
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    rho: Annotated[float, typer.Option(help="Minimum visual non-sink ratio (heads, VAR).")] = 0.5,
    p: Annotated[float, typer.Option(help="VAR: fraction of sink attention moved.")] = 0.6,
    dims: DimsOpt = None,
    draws: Annotated[int, typer.Option(help="Random draws of the knock-out control.")] = 3,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per answer.")] = 16,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """One self-contained HTML page (works offline): sinks, heads, ablation and VAR for IMAGE."""
    from analysis.checks import check_settings
    from analysis.report import make_report
    from analysis.var import VarConfig

    VarConfig(p=p, rho=rho, tau=tau)
    check_settings(draws=draws, max_new_tokens=max_new_tokens, max_length=max_length)
    parse_dims(dims)
    check_outputs(out=out)
    path = single_image(image, model)
    loaded = load(model, device, dtype, device_map, max_length=max_length)
    written = make_report(
        loaded,
        path,
        prompt,
        out,
        answers=split_answers(answers),
        dims=parse_dims(dims),
        tau=tau,
        rho=rho,
        p=p,
        draws=draws,
        max_new_tokens=max_new_tokens,
    )
    size = written.stat().st_size / 1e6
    console.print(f"wrote {escape(str(written))} ({size:.1f} MB, self-contained)")


@app.command()
@friendly
def demo(
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = 20.0,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """The main job on the bundled SYNTHETIC demo model: dims found vs planted, sinks, F1."""
    import torch

    from analysis.checks import check_settings
    from analysis.dims import discover_dims
    from analysis.sinks import find_sinks, validate_sinks

    check_settings(tau=tau)
    check_outputs(json_out=json_out)
    truth = json.loads((demo_dir() / "ground_truth.json").read_text())
    loaded = load(None, device, None)
    paths = image_paths(None, None)
    prompt = "Describe the image."
    batches = calibration(loaded, paths, prompt)
    console.print(
        f"[bold]Synthetic demo model[/] ({loaded.n_layers} layers, d_model {loaded.d_model}), "
        f"{len(paths)} images: weights constructed with a planted visual attention sink."
    )
    found = discover_dims(loaded, batches)
    planted = sorted(truth["sink_dims"])
    ok = found.dims == planted
    console.print(
        f"sink dims: discovered {found.dims}, planted {planted} -> "
        + ("[green]match[/]" if ok else "[red]MISMATCH[/]")
    )
    table = Table(title=f"visual sinks per image (tau {tau:g}, layers 2..L-1)")
    for column in (
        "image",
        "visual tokens",
        "sinks found",
        "planted",
        "F1 (min over layers)",
        "BOS sink",
    ):
        table.add_column(column)
    rows = []
    for path, batch in zip(paths, batches, strict=True):
        result = find_sinks(loaded, batch, dims=found.dims or planted, tau=tau)
        geometry = batch.layouts[0].geometry
        planted_cells = {tuple(cell) for cell in truth["images"][path.name]["sink_patches"]}
        mask = torch.tensor(
            [
                (int(r), int(c)) in planted_cells
                for r, c in zip(geometry.row, geometry.col, strict=True)
            ]
        )
        scores = validate_sinks(result, [mask])[0]
        f1 = min(s["f1"] for s in scores)
        bos = bool(result.text_sinks()[0, 2:, batch.layouts[0].bos_position].all())
        found_n = int(result.consensus()[0][geometry.positions].sum())
        table.add_row(
            escape(path.name),
            str(geometry.n_visual),
            str(found_n),
            str(len(planted_cells)),
            f"{f1:.2f}",
            "yes" if bos else "no",
        )
        rows.append(
            {
                "image": path.name,
                "sinks_found": found_n,
                "planted": len(planted_cells),
                "f1_min": f1,
                "bos_sink": bos,
            }
        )
    console.print(table)
    write_json(
        json_out,
        {"dims_found": found.dims, "dims_planted": planted, "images": rows, "config": found.config},
    )


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
