"""DRAFT for analysis/cli.py: the ``vsink figures`` and ``vsink report`` commands.

Paste the two functions below into ``analysis/cli.py`` (after ``ablate``); they
use only that module's helpers (``app``, ``friendly``, ``load``,
``image_paths``, ``single_image``, ``parse_dims``, the option aliases). The
imports at the top are here only so this file lints and can be tried with
``python -c "import analysis._cli_figures_draft; from analysis.cli import main; main()"``.
Delete this file once merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from analysis.cli import (
    DeviceMapOpt,
    DeviceOpt,
    DimsOpt,
    DtypeOpt,
    ImagesOpt,
    ModelArg,
    PromptOpt,
    app,
    console,
    friendly,
    image_paths,
    load,
    parse_dims,
    single_image,
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
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Reproduce every paper figure: PNG + interactive HTML + the JSON each was drawn from."""
    import shlex
    import sys

    from analysis.figures import make_figures

    loaded = load(model, device, dtype, device_map)
    paths = image_paths(images, model)
    # Recorded in the folder's README; run as a console script, argv is the exact command.
    called = Path(sys.argv[0]).name == "vsink"
    command = shlex.join(["vsink", *sys.argv[1:]]) if called else f"vsink figures --out {out}"
    result = make_figures(
        loaded,
        paths,
        out,
        prompt=prompt,
        answers=[a.strip() for a in answers.split(",") if a.strip()],
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
        console.print(f"{item.spec.paper:>32}  {out / item.spec.name}.{{png,html,json}}")
    console.print(f"wrote {len(result.figures)} figures to {out} (index: {out / 'index.html'})")


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
    dtype: DtypeOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """One self-contained HTML page (works offline): sinks, heads, ablation and VAR for IMAGE."""
    from analysis.report import make_report

    loaded = load(model, device, dtype, device_map)
    path = single_image(image, model)
    written = make_report(
        loaded,
        path,
        prompt,
        out,
        answers=[a.strip() for a in answers.split(",") if a.strip()],
        dims=parse_dims(dims),
        tau=tau,
        rho=rho,
        p=p,
        draws=draws,
        max_new_tokens=max_new_tokens,
    )
    console.print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB, self-contained)")
