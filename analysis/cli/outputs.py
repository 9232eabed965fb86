"""Commands that write figures and pages: figures, report, and the synthetic demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

import analysis.cli as cli  # `cli.load` is looked up per call: tests replace the loader
from analysis.cli.inputs import (
    calibration,
    check_outputs,
    demo_dir,
    image_paths,
    parse_dims,
    single_image,
    split_answers,
)
from analysis.cli.options import (
    ANSWERS,
    DESCRIBE_PROMPT,
    QUESTION_PROMPT,
    AllowUnknownConfigOpt,
    DeviceMapOpt,
    DeviceOpt,
    DimsOpt,
    DtypeOpt,
    ImagesOpt,
    JsonOpt,
    MaxLengthOpt,
    ModelArg,
    PromptOpt,
)
from analysis.cli.root import app, friendly
from analysis.cli.tables import console, write_json
from analysis.config import (
    DRAWS,
    MAX_NEW_TOKENS,
    PNG_SCALE,
    REPORT_DRAWS,
    RHO,
    TAU,
    P,
)
from analysis.errors import UserInputError


@app.command()
@friendly
def figures(
    model: ModelArg = None,
    images: ImagesOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNG, HTML and JSON files.")] = Path(
        "figures"
    ),
    prompt: PromptOpt = QUESTION_PROMPT,
    answers: Annotated[
        str, typer.Option(help="Comma-separated answers scored by the knock-outs.")
    ] = ANSWERS,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    rho: Annotated[float, typer.Option(help="Minimum visual non-sink ratio (heads, VAR).")] = RHO,
    p: Annotated[float, typer.Option(help="VAR: fraction of sink attention moved.")] = P,
    dims: DimsOpt = None,
    focus: Annotated[
        int, typer.Option(help="Index of the image shown in the per-image figures.")
    ] = 0,
    layer: Annotated[
        int | None,
        typer.Option(help="Layer of figures 1, 2, 3d (default: top image-centric head's)."),
    ] = None,
    draws: Annotated[int, typer.Option(help="Random draws of the knock-out control.")] = DRAWS,
    only: Annotated[
        list[str] | None, typer.Option(help="Only these figures (repeatable), e.g. fig5_var.")
    ] = None,
    scale: Annotated[
        float, typer.Option(help="PNG resolution, times the figure size.")
    ] = PNG_SCALE,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
        raise UserInputError(
            f"--focus {focus}: there are {len(paths)} images (0..{len(paths) - 1})."
        )
    loaded = cli.load(
        model,
        device,
        dtype,
        device_map,
        max_length=max_length,
        allow_unknown_config=allow_unknown_config,
    )
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
    prompt: PromptOpt = QUESTION_PROMPT,
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    answers: Annotated[
        str, typer.Option(help="Comma-separated answers scored by the knock-outs.")
    ] = ANSWERS,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    rho: Annotated[float, typer.Option(help="Minimum visual non-sink ratio (heads, VAR).")] = RHO,
    p: Annotated[float, typer.Option(help="VAR: fraction of sink attention moved.")] = P,
    dims: DimsOpt = None,
    draws: Annotated[
        int, typer.Option(help="Random draws of the knock-out control.")
    ] = REPORT_DRAWS,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens generated per answer.")
    ] = MAX_NEW_TOKENS,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
    loaded = cli.load(
        model,
        device,
        dtype,
        device_map,
        max_length=max_length,
        allow_unknown_config=allow_unknown_config,
    )
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
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
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
    loaded = cli.load(None, device, None)
    paths = image_paths(None, None)
    prompt = DESCRIBE_PROMPT
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
