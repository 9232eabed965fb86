"""Commands on run folders: eval, sweep (and its figure), summary, chair, export, merge."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import analysis.cli as cli  # `cli.load` is looked up per call: tests replace the loader
from analysis.cli.inputs import (
    check_outputs,
    dataset_items,
    parse_dims,
    split_answers,
)
from analysis.cli.options import (
    ANSWERS,
    AllowUnknownConfigOpt,
    AnswerFileOpt,
    BatchOpt,
    BenchmarkOpt,
    BootOpt,
    DataOpt,
    DeviceMapOpt,
    DeviceOpt,
    DimsOpt,
    DtypeOpt,
    ForceOpt,
    FormatOpt,
    HfOpt,
    ImageRootOpt,
    JsonOpt,
    LimitOpt,
    MaxLengthOpt,
    ModelArg,
    QuestionsOpt,
    TsvOpt,
)
from analysis.cli.root import app, friendly
from analysis.cli.tables import _ci, console, print_summary, print_wide, write_json
from analysis.config import (
    BATCH_SIZE,
    CI_LEVEL,
    EVAL_MAX_NEW_TOKENS,
    N_BOOT,
    N_CALIBRATION,
    RHO,
    SEED,
    SWEEP_GRID,
    TAU,
    VAR_PRESET,
)
from analysis.errors import UserInputError


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
    allow_unknown_config: bool = False,
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
        loaded = cli.load(
            model,
            rank_device(device, shard),
            dtype,
            device_map,
            max_length,
            allow_unknown_config=allow_unknown_config,
        )
        return shard, evaluate(loaded, items, dataset=source, force=force, shard=shard, **options)


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
            help="Comma-separated conditions, e.g. baseline, var[:p=..,rho=..,to=text], "
            "ablate-sinks, ablate-random[:draws=K]; `vsink conditions` lists every kind."
        ),
    ] = "baseline,var,ablate-sinks,ablate-random",
    out: Annotated[Path, typer.Option(help="Run folder (required; resumed when it exists).")] = ...,  # type: ignore[assignment]
    benchmark: BenchmarkOpt = None,
    tsv: TsvOpt = None,
    hf: HfOpt = None,
    data: DataOpt = None,
    format_: FormatOpt = None,
    answer_file: AnswerFileOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = BATCH_SIZE,
    answers: Annotated[
        str, typer.Option(help="Candidate answers; the first is the positive class.")
    ] = ANSWERS,
    max_new_tokens: Annotated[
        int, typer.Option(help="Greedy generation length (0: score by log-probs only).")
    ] = EVAL_MAX_NEW_TOKENS,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    rho: Annotated[
        float, typer.Option(help="Minimum visual non-sink ratio (heads, VAR default).")
    ] = RHO,
    preset: Annotated[
        str, typer.Option(help="VAR preset of var conditions: paper (default) or official.")
    ] = VAR_PRESET,
    dims: DimsOpt = None,
    calibration_items: Annotated[
        int, typer.Option(help="Distinct images used to discover sink dims when needed.")
    ] = N_CALIBRATION,
    stats: Annotated[
        bool, typer.Option(help="Collect sink counts and head scores in the baseline pass.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of random knock-outs and the bootstrap.")] = SEED,
    n_boot: BootOpt = N_BOOT,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
        allow_unknown_config=allow_unknown_config,
        bench={
            "benchmark": benchmark,
            "tsv": tsv,
            "hf": hf,
            "data": data,
            "format": format_,
            "answer_file": answer_file,
        },
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


@app.command()
@friendly
def sweep(
    model: ModelArg = None,
    grid: Annotated[
        str,
        typer.Option(help="VAR settings: p=0.2:0.8:0.2,rho=0.3,0.5,0.8 (ranges inclusive)."),
    ] = SWEEP_GRID,
    base: Annotated[
        str, typer.Option(help="The condition each point extends: var, var-to-text, ...")
    ] = "var",
    out: Annotated[Path, typer.Option(help="Run folder (required; resumed when it exists).")] = ...,  # type: ignore[assignment]
    questions: QuestionsOpt = None,
    images: ImageRootOpt = None,
    benchmark: BenchmarkOpt = None,
    tsv: TsvOpt = None,
    hf: HfOpt = None,
    data: DataOpt = None,
    format_: FormatOpt = None,
    answer_file: AnswerFileOpt = None,
    metric: Annotated[
        str | None,
        typer.Option(help="Metric to plot (default: accuracy, or the benchmark's total)."),
    ] = None,
    scoring: Annotated[str, typer.Option(help="logprob or generate.")] = "logprob",
    x: Annotated[str, typer.Option("--x", help="Setting on the x axis: p or rho.")] = "p",
    limit: LimitOpt = None,
    batch_size: BatchOpt = BATCH_SIZE,
    max_new_tokens: Annotated[
        int, typer.Option(help="Greedy generation length (0: score by log-probs only).")
    ] = 0,
    tau: Annotated[float, typer.Option(help="phi threshold for sink tokens.")] = TAU,
    dims: DimsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of random heads and the bootstrap.")] = SEED,
    n_boot: BootOpt = N_BOOT,
    device: DeviceOpt = None,
    max_length: MaxLengthOpt = None,
    dtype: DtypeOpt = None,
    allow_unknown_config: AllowUnknownConfigOpt = False,
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
        allow_unknown_config=allow_unknown_config,
        bench={
            "benchmark": benchmark,
            "tsv": tsv,
            "hf": hf,
            "data": data,
            "format": format_,
            "answer_file": answer_file,
        },
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
    from analysis.sweep import sweep_rows
    from analysis.viz import sweep_figure, to_png, write_html

    summary = json.loads((run_dir / "summary.json").read_text())
    rows = sweep_rows(summary, read_manifest(run_dir)["conditions"], metric=metric, scoring=scoring)
    fig = sweep_figure(rows, x=x)
    return [write_html(fig, run_dir / "sweep.html"), to_png(fig, run_dir / "sweep.png")]


@app.command()
@friendly
def conditions() -> None:
    """List every registered condition kind and its options (for --conditions)."""
    from analysis.interventions import registry

    for kind, spec in registry.kinds().items():
        aliases = f"  (also {', '.join(spec.aliases)})" if spec.aliases else ""
        console.print(escape(f"{kind}: {spec.grammar or kind}{aliases}"), soft_wrap=True)


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
    n_boot: BootOpt = N_BOOT,
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
        level=CI_LEVEL,
    )
    reference = result["reference"]
    table = Table(
        title=f"CHAIR over {result['n_captions']} captions ({100 * CI_LEVEL:g}% bootstrap CIs)"
    )
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
            raise UserInputError(
                f"--template {template}: not a readable JSON file ({err})."
            ) from None
        if not isinstance(entries, list):
            raise UserInputError(f"--template {template}: expected a JSON list of entries.")
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
