"""``vsink ablate``: attention knock-outs on one prompt, or over a dataset on the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.markup import escape
from rich.table import Table

import analysis.cli as cli  # `cli.load` is looked up per call: tests replace the loader
from analysis.cli.inputs import (
    calibration,
    check_outputs,
    parse_dims,
    resolve_dims,
    single_image,
    split_answers,
)
from analysis.cli.options import (
    ANSWERS,
    QUESTION_PROMPT,
    AllowUnknownConfigOpt,
    BatchOpt,
    BootOpt,
    DeviceMapOpt,
    DeviceOpt,
    DimsOpt,
    DtypeOpt,
    ForceOpt,
    ImageRootOpt,
    JsonOpt,
    LimitOpt,
    MaxLengthOpt,
    ModelArg,
    PromptOpt,
    QuestionsOpt,
)
from analysis.cli.root import app, friendly
from analysis.cli.tables import _ci, console, print_wide, write_json
from analysis.config import (
    BATCH_SIZE,
    DRAWS,
    N_BOOT,
    SEED,
    TAU,
)
from analysis.errors import UserInputError


@app.command()
@friendly
def ablate(
    model: ModelArg = None,
    image: Annotated[Path | None, typer.Option(help="Image file (default: a demo image).")] = None,
    prompt: PromptOpt = QUESTION_PROMPT,
    target: Annotated[
        list[str] | None,
        typer.Option(help="sinks, random, nonsink, visual or positions (repeatable)."),
    ] = None,
    answers: Annotated[str, typer.Option(help="Comma-separated candidate answers.")] = ANSWERS,
    draws: Annotated[int, typer.Option(help="Random draws for target=random.")] = DRAWS,
    mode: Annotated[
        str, typer.Option(help="pre (renormalise) or post (zero, no renormalise).")
    ] = "pre",
    layers: Annotated[
        str | None, typer.Option(help="Comma-separated layers (default all).")
    ] = None,
    positions: Annotated[
        str | None, typer.Option(help="Key positions for target=positions.")
    ] = None,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    dims: DimsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the random draws.")] = SEED,
    questions: QuestionsOpt = None,
    images: ImageRootOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Dataset mode: run folder (default vsink-runs/ablate-<questions>)."),
    ] = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = BATCH_SIZE,
    max_new_tokens: Annotated[
        int, typer.Option(help="Dataset mode: also generate this many tokens (0: log-probs only).")
    ] = 0,
    n_boot: BootOpt = N_BOOT,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
            allow_unknown_config=allow_unknown_config,
        )
        return
    if images is not None:
        raise UserInputError("--images is for dataset mode (with --questions); use --image.")
    parse_dims(positions)
    path = single_image(image, model)
    loaded = cli.load(
        model,
        device,
        dtype,
        device_map,
        max_length=max_length,
        allow_unknown_config=allow_unknown_config,
    )
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
    allow_unknown_config: bool,
) -> None:
    """``vsink ablate --questions``: baseline + knock-outs on the evaluation runner."""
    from analysis.cli.evaluate import run_evaluation

    if "positions" in targets:
        raise UserInputError(
            "target=positions is per prompt; over a dataset use the other targets."
        )
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
        allow_unknown_config=allow_unknown_config,
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
