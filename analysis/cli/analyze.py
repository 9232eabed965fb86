"""Commands that analyse one model: info, dims, sinks, generate, heads, contribution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import analysis.cli as cli  # `cli.load` is looked up per call: tests replace the loader
from analysis.cli.inputs import (
    calibration,
    check_outputs,
    image_paths,
    parse_dims,
    resolve_dims,
    single_image,
)
from analysis.cli.options import (
    DESCRIBE_PROMPT,
    QUESTION_PROMPT,
    AllowUnknownConfigOpt,
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
from analysis.cli.tables import console, err_console, write_json
from analysis.config import (
    CI_LEVEL,
    DIM_MIN_ABS,
    DIM_MIN_RATIO,
    MAX_NEW_TOKENS,
    MIN_IMAGE_ATTENTION,
    RHO,
    TAU,
    TOP_HEADS,
    P,
)


@app.command()
@friendly
def info(
    model: ModelArg = None,
    image: Annotated[
        Path | None, typer.Option(help="Image for the token layout (default: a gray 336x336).")
    ] = None,
    prompt: Annotated[str, typer.Option(help="Prompt for the token layout.")] = DESCRIBE_PROMPT,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
    loaded = cli.load(
        model, device, dtype, max_length=max_length, allow_unknown_config=allow_unknown_config
    )
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


@app.command()
@friendly
def dims(
    model: ModelArg = None,
    images: ImagesOpt = None,
    prompt: PromptOpt = DESCRIBE_PROMPT,
    min_ratio: Annotated[
        float, typer.Option(help="Peak / median ratio to count as massive.")
    ] = DIM_MIN_RATIO,
    min_abs: Annotated[
        float, typer.Option(help="Absolute floor on the peak (0 = off).")
    ] = DIM_MIN_ABS,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Discover massive-activation (sink) dimensions over a set of images."""
    from analysis.checks import check_settings
    from analysis.dims import DimThresholds, discover_dims

    thresholds = DimThresholds(min_ratio=min_ratio, min_abs=min_abs)
    check_settings(max_length=max_length)
    check_outputs(json_out=json_out)
    paths = image_paths(images, model)
    loaded = cli.load(
        model, device, dtype, max_length=max_length, allow_unknown_config=allow_unknown_config
    )
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
    prompt: PromptOpt = DESCRIBE_PROMPT,
    tau: Annotated[float, typer.Option(help="phi threshold for a sink token.")] = TAU,
    dims: DimsOpt = None,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
    json_out: JsonOpt = None,
    html: Annotated[Path | None, typer.Option(help="Write an interactive sink map here.")] = None,
) -> None:
    """Classify sink tokens (phi >= tau) at every layer for one image."""
    import torch

    from analysis.checks import check_settings
    from analysis.sinks import find_sinks
    from analysis.viz import sink_overview, write_html

    check_settings(tau=tau, max_length=max_length)
    parse_dims(dims)  # a malformed --dims is refused before loading
    check_outputs(json_out=json_out, html=html)
    path = single_image(image, model)
    loaded = cli.load(
        model, device, dtype, max_length=max_length, allow_unknown_config=allow_unknown_config
    )
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
    prompt: PromptOpt = QUESTION_PROMPT,
    var: Annotated[bool, typer.Option("--var", help="Also generate with VAR.")] = False,
    preset: Annotated[
        str, typer.Option(help="VAR preset: paper (default) or official (the authors' code).")
    ] = "paper",
    p: Annotated[
        float | None,
        typer.Option(help=f"VAR p (default {P:g}): paper preset moves p, official keeps p."),
    ] = None,
    rho: Annotated[
        float | None,
        typer.Option(help=f"VAR rho (default {RHO:g}): paper min r, official max sink fraction."),
    ] = None,
    tau: Annotated[float | None, typer.Option(help=f"phi threshold (default {TAU:g}).")] = None,
    dims: DimsOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = MAX_NEW_TOKENS,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
    loaded = cli.load(
        model, device, dtype, max_length=max_length, allow_unknown_config=allow_unknown_config
    )
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
    prompt: PromptOpt = QUESTION_PROMPT,
    rho: Annotated[
        float | None, typer.Option(help=f"Minimum visual non-sink ratio (default {RHO:g}).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Paper preset: general, hallucination, vision-centric.")
    ] = None,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    dims: DimsOpt = None,
    top: Annotated[int, typer.Option(help="Heads to list.")] = TOP_HEADS,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
    loaded = cli.load(
        model, device, dtype, max_length=max_length, allow_unknown_config=allow_unknown_config
    )
    batches = calibration(loaded, paths, prompt)
    chosen = resolve_dims(loaded, dims, batches)
    result = score_heads(loaded, batches, dims=chosen, tau=tau, rho=rho, preset=preset)
    table = Table(
        title=f"heads over {len(paths)} images (rho {result.rho:g}, s >= {MIN_IMAGE_ATTENTION:g})"
    )
    ci = f"[{100 * CI_LEVEL:g}% CI]"
    for column in ("layer", "head", "selected", f"s mean {ci}", f"r mean {ci}"):
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
def contribution(
    model: ModelArg = None,
    images: ImagesOpt = None,
    prompt: PromptOpt = QUESTION_PROMPT,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    dims: DimsOpt = None,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Residual contribution ||alpha_ij x_j W_OV|| of visual sinks vs other tokens (fig. 3c)."""
    from analysis.checks import check_settings
    from analysis.contribution import residual_contribution

    check_settings(tau=tau, max_length=max_length)
    parse_dims(dims)
    check_outputs(json_out=json_out)
    paths = image_paths(images, model)
    loaded = cli.load(
        model, device, dtype, max_length=max_length, allow_unknown_config=allow_unknown_config
    )
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
