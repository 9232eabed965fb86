"""The option and argument types shared by the commands (typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: The prompt of the commands that describe a layout or find sinks.
DESCRIBE_PROMPT = "Describe the image."
#: The yes/no prompt of the commands that score answers (the demo images hold red objects).
QUESTION_PROMPT = "Is there a red object in the image?"
#: Candidate answers; the first is the positive class.
ANSWERS = "yes,no"

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

AllowUnknownConfigOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unknown-config",
        help="Load a config with top-level keys the model's family does not list (they may "
        "change the visual-token layout); the family's value checks still run.",
    ),
]


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
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="A dataset file or folder of any registered format, chosen by its suffix and "
        "--benchmark (or named with --format).",
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="The dataset reader of --data (default: by its suffix)."),
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
