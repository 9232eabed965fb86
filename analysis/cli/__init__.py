"""The ``vsink`` command line.

Every command takes an optional MODEL (HF id or local folder; the bundled
synthetic demo model when omitted), ``--device`` and ``--dtype``, and writes
its results with the configuration that produced them when ``--json`` is given.
Errors the user can fix are printed as one clear line (see :mod:`analysis.cli.root`
for the policy and ``--debug``).

Layout: :mod:`~analysis.cli.root` (the typer app, ``main``, the error policy),
:mod:`~analysis.cli.options` (shared option types), :mod:`~analysis.cli.inputs`
(inputs resolved before loading), :mod:`~analysis.cli.tables` (what is printed),
and one module per command group: :mod:`~analysis.cli.analyze`,
:mod:`~analysis.cli.ablate`, :mod:`~analysis.cli.evaluate`, :mod:`~analysis.cli.outputs`.
"""

from __future__ import annotations

from analysis.cli.inputs import (
    bench_items,
    calibration,
    check_outputs,
    dataset_items,
    demo_dir,
    image_paths,
    load,
    parse_dims,
    resolve_dims,
    resolve_model_path,
    single_image,
    split_answers,
)
from analysis.cli.root import ONE_LINE_ERRORS, app, friendly, main
from analysis.cli.tables import console, err_console, print_benchmark, print_summary, print_wide

# The command modules register their commands on `app` when imported, in this order in --help.
# isort: off
from analysis.cli import analyze, ablate, evaluate, outputs

# isort: on

__all__ = [
    "ONE_LINE_ERRORS",
    "ablate",
    "analyze",
    "app",
    "bench_items",
    "calibration",
    "check_outputs",
    "console",
    "dataset_items",
    "demo_dir",
    "err_console",
    "evaluate",
    "friendly",
    "image_paths",
    "load",
    "main",
    "outputs",
    "parse_dims",
    "print_benchmark",
    "print_summary",
    "print_wide",
    "resolve_dims",
    "resolve_model_path",
    "single_image",
    "split_answers",
]
