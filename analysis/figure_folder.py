"""A folder of figures: per figure ``NAME.png``, ``NAME.html`` and ``NAME.json``, plus an index.

:func:`write_figures` draws the figures of :mod:`analysis.figures` from computed
results and writes them; ``NAME.json`` holds the result data each was drawn
from (:func:`figure_data`), with the configuration and provenance, and the
folder gets ``index.html``, ``index.json`` and ``README.md``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from analysis import viz
from analysis.config import PNG_SCALE
from analysis.errors import UserInputError
from analysis.figures import FIGURES, FigureResults, FigureSpec, draw_figures
from analysis.fsio import write_atomic
from analysis.results import to_jsonable

# ----------------------------------------------------------------------------- JSON


def _round(value: Any, digits: int = 4) -> Any:
    """Nested lists of floats with ``digits`` significant digits (NaN -> None)."""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _tensor_data(tensor: torch.Tensor) -> Any:
    if tensor.dtype == torch.bool:
        return tensor.int().tolist()
    return _round(to_jsonable(tensor.float()))


def result_data(result: Any) -> dict[str, Any]:
    """A result's JSON summary plus the tensors a figure reads (rounded, JSON-friendly)."""
    from analysis.heads import HeadScores
    from analysis.var import VarAttention

    if isinstance(result, VarAttention):
        return {
            "kind": result.kind,
            "before": result_data(result.before),
            "after": result_data(result.after),
            "record": result.record.to_json(),
            "summary": to_jsonable(result.summary()),
            "config": to_jsonable(result.config),
        }
    payload = result.to_json()
    if isinstance(result, HeadScores):
        # Per-query s and r are [sample, layer, head, pos]; the figures read per-sample means.
        tensors = {**result.per_sample(), "has_visual_sink": result.has_visual_sink}
    else:
        tensors = {name: getattr(result, name) for name in result.tensor_fields}
    payload["tensors"] = {
        name: _tensor_data(value) for name, value in tensors.items() if value is not None
    }
    return payload


def figure_data(name: str, results: FigureResults) -> dict[str, Any]:
    """The data a figure was drawn from: its results, cut to what the figure reads.

    Most figures read their results whole; the sink figures read one sample's
    phi or only the per-layer counts, so their JSON holds just that (with the
    result's summary and configuration).
    """
    spec = {s.name: s for s in FIGURES}[name]
    sinks = results.sinks
    if name == "fig1_sink_map":
        geometry = sinks.layouts[results.focus].geometry
        payload = sinks.to_json()
        payload["tensors"] = {
            "phi_visual": _tensor_data(sinks.phi[results.focus][:, geometry.positions]),
            "row": geometry.row.tolist(),
            "col": geometry.col.tolist(),
        }
        return {"sinks": payload}
    if name == "sink_counts":
        payload = sinks.to_json()
        payload["tensors"] = {key: value.tolist() for key, value in sinks.counts().items()}
        return {"sinks": payload}
    return {key: result_data(getattr(results, key)) for key in spec.results}


# ----------------------------------------------------------------------------- output


@dataclass
class FigureFile:
    """One written figure: its spec and the files (png, html, json) written for it."""

    spec: FigureSpec
    files: dict[str, Path]


@dataclass
class FigureSet:
    """What :func:`make_figures` wrote, with the results it drew from."""

    out_dir: Path
    figures: list[FigureFile]
    results: FigureResults
    command: str

    def markdown(self) -> str:
        """A README for the folder: each figure, the paper figure it reproduces, the command."""
        from analysis.loading import DEMO_MODEL_DIR

        config = self.results.config
        model_path = Path(config["model"]["name_or_path"])
        model = (
            "the bundled **synthetic** demo model (constructed weights with a planted sink, "
            "not a trained model; ground truth in `analysis/demo/ground_truth.json`)"
            if model_path.resolve() == DEMO_MODEL_DIR.resolve()
            else f"`{config['model']['name_or_path']}`"
        )
        lines = [
            "# Figures",
            "",
            f"Made by `{self.command}` (`analysis.figures.make_figures`) on {model} "
            f"({config['model']['family']}, {config['model']['n_layers']} layers), "
            f"{len(config['images'])} image(s), prompt *{config['prompt']}*, "
            f"sink dims {config['dims']}, tau {config['tau']:g}, rho {config['rho']:g}, "
            f"VAR p {config['p']:g}. Per-image views use `{Path(config['focus_image']).name}`.",
            "",
            "Each figure has `NAME.png` (static, matplotlib), `NAME.html` (interactive, offline; "
            "all share `plotly.min.js` in this folder) and `NAME.json` (the result data it was "
            "drawn from, with configuration and provenance).",
            "",
            "| figure | reproduces | shows | files |",
            "|---|---|---|---|",
        ]
        for item in self.figures:
            spec = item.spec
            links = " ".join(f"[{kind}]({path.name})" for kind, path in sorted(item.files.items()))
            shows = spec.description.replace("|", "\\|")  # |x_d| would split the table row
            lines.append(f"| `{spec.name}` | {spec.paper} | {shows} | {links} |")
        lines.append("")
        for item in self.figures:
            if "png" in item.files:
                lines += [
                    f"## {item.spec.paper}: {item.spec.title}",
                    "",
                    f"![{item.spec.name}]({item.files['png'].name})",
                    "",
                ]
        return "\n".join(lines)

    def index_html(self) -> str:
        cards = []
        for item in self.figures:
            spec = item.spec
            image = (
                f'<a href="{item.files["html"].name}"><img src="{item.files["png"].name}" '
                f'alt="{spec.name}"></a>'
                if "png" in item.files and "html" in item.files
                else ""
            )
            cards.append(
                f"<section><h2>{html.escape(spec.paper)}: {html.escape(spec.title)}</h2>"
                f"<p>{html.escape(spec.description)}</p>{image}</section>"
            )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Figures</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "img{max-width:100%;border:1px solid #ddd}</style></head><body>"
            f"<h1>Figures</h1><p><code>{html.escape(self.command)}</code></p>"
            + "".join(cards)
            + "</body></html>"
        )


def write_figures(
    results: FigureResults,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "html", "json"),
    scale: float = PNG_SCALE,
    command: str = "vsink figures",
    show_progress: bool = True,
) -> FigureSet:
    """Draw figures from computed results and write them (PNG, HTML, JSON) plus an index."""
    unknown = set(formats) - {"png", "html", "json"}
    if unknown:
        raise UserInputError(f"Unknown format(s) {sorted(unknown)}; use png, html, json.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(results, names)
    specs = {spec.name: spec for spec in FIGURES}
    written = []
    bar = tqdm(figures.items(), desc="writing", disable=not show_progress, leave=False)
    for name, fig in bar:
        spec = specs[name]
        files: dict[str, Path] = {}
        if "png" in formats:
            files["png"] = viz.to_png(fig, out / f"{name}.png", scale=scale)
        if "html" in formats:
            files["html"] = viz.write_html(fig, out / f"{name}.html", include_plotlyjs="directory")
        if "json" in formats:
            payload = {
                "figure": name,
                "paper_figure": spec.paper,
                "title": spec.title,
                "description": spec.description,
                "config": to_jsonable(results.config),
                "results": figure_data(name, results),
            }
            files["json"] = write_atomic(
                out / f"{name}.json", json.dumps(payload, separators=(",", ":"))
            )
        written.append(FigureFile(spec, files))
    figure_set = FigureSet(out, written, results, command)
    write_atomic(out / "index.html", figure_set.index_html())
    write_atomic(
        out / "index.json",
        json.dumps(
            {
                "command": command,
                "figures": [
                    {
                        **dataclasses.asdict(item.spec),
                        "files": {k: v.name for k, v in item.files.items()},
                    }
                    for item in written
                ],
                "config": to_jsonable(results.config),
            },
            indent=2,
        ),
    )
    write_atomic(out / "README.md", figure_set.markdown())
    return figure_set
