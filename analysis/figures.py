"""Every paper figure from one call: compute each result once, draw, write PNG + HTML + JSON.

:func:`make_figures` runs the analyses on a set of images (sinks, heads,
received attention, residual contribution, knock-outs on all of them; the
per-image views on one "focus" image), draws every figure of
:mod:`analysis.plots` and writes, per figure, ``NAME.png`` (matplotlib, no
browser), ``NAME.html`` (interactive, offline: one shared ``plotly.min.js``
in the folder) and ``NAME.json`` (the result data it was drawn from, with
the configuration and provenance), plus ``index.html``, ``index.json`` and
``README.md``. :func:`compute_results` and :func:`draw_figures` are the two
halves, reused by :mod:`analysis.report`.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from analysis import plots
from analysis.fsio import write_atomic
from analysis.results import provenance, to_jsonable

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from analysis.ablation import AblationResult
    from analysis.capture import AttentionMaps, ReceivedAttention, TokenStates
    from analysis.contribution import ContributionResult
    from analysis.heads import HeadScores
    from analysis.loading import LoadedModel
    from analysis.sinks import SinkResult
    from analysis.tokens import ImageLike
    from analysis.var import VarAttention

DEFAULT_PROMPT = "Is there a red object in the image?"


@dataclass(frozen=True)
class FigureSpec:
    """What a figure shows and which paper figure it reproduces."""

    name: str
    paper: str
    title: str
    description: str
    results: tuple[str, ...]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "fig1_text_attention",
        "Fig. 1",
        "Attention of text tokens over the image",
        "Attention from several text tokens of the prompt to the visual tokens, over the "
        "image, on one colour scale; visual sinks (phi >= tau) outlined. Paper: the same few "
        "background tokens light up whatever the text token.",
        ("text_maps",),
    ),
    FigureSpec(
        "fig1_sink_map",
        "Fig. 1 (sink tokens)",
        "phi of the visual tokens over the image",
        "The sink score phi of every visual token at one layer input; tokens with "
        "phi >= tau (visual sinks) outlined.",
        ("sinks",),
    ),
    FigureSpec(
        "fig2_hidden_states",
        "Fig. 2",
        "Massive activation in the sink dimensions",
        "|x_d| over all hidden dimensions for BOS, a visual sink and a non-sink visual "
        "token at one layer input; the sink dims are labelled.",
        ("states",),
    ),
    FigureSpec(
        "fig3a_phi_vs_attention",
        "Fig. 3(a)",
        "phi vs attention received",
        "Every token's phi against the attention it receives from the text queries after "
        "the image (mean over heads), pooled over images and the layers holding sinks.",
        ("received",),
    ),
    FigureSpec(
        "fig3b_knockout",
        "Fig. 3(b)",
        "Knock-out of sinks vs random visual tokens",
        "Blocking attention from text tokens to the visual sinks, to as many random "
        "non-sink visual tokens, and to all non-sink visual tokens: change of the answer's "
        "log-probability and KL of the next-token distribution, mean with bootstrap CIs.",
        ("ablation",),
    ),
    FigureSpec(
        "fig3c_contribution",
        "Fig. 3(c)",
        "Residual contribution of sinks vs other tokens",
        "Per layer and key group: ||alpha_ij x_j W_OV|| per (query, key) pair, the attention "
        "alpha_ij and the value norm ||x_j W_OV|| behind it.",
        ("contribution",),
    ),
    FigureSpec(
        "fig3d_without_sinks",
        "Fig. 3(d)",
        "Attention map with and without sinks",
        "Mean attention of the text queries over the image, baseline and with attention to "
        "the visual sinks knocked out (pre-softmax, all layers); each map on its own scale.",
        ("text_maps", "knockout_maps"),
    ),
    FigureSpec(
        "fig4_head_contrast",
        "Fig. 4",
        "Heads with high vs low visual non-sink ratio",
        "Attention over the image of the heads with the highest and the lowest visual "
        "non-sink ratio r. Paper: high-r heads look at the object, low-r heads at the sinks.",
        ("contrast_maps", "heads"),
    ),
    FigureSpec(
        "fig5_var",
        "Fig. 5",
        "VAR: attention of an image-centric head before and after",
        "An image-centric head's attention over the image without and with VAR, and the "
        "change (VAR moves attention from the sinks to the non-sink visual tokens).",
        ("var",),
    ),
    FigureSpec(
        "heads_layer_head",
        "image-centric heads (Sec. 5)",
        "Layer x head map of image-centric heads and of r",
        "Per layer and head, the fraction of text queries for which the head is "
        "image-centric (s >= 0.2 and r >= rho) and the mean visual non-sink ratio r.",
        ("heads",),
    ),
    FigureSpec(
        "sink_counts",
        "visual sinks per layer (Sec. 4)",
        "Visual sink tokens per layer",
        "Number of visual and text tokens with phi >= tau at each layer input.",
        ("sinks",),
    ),
)
FIGURE_NAMES = tuple(spec.name for spec in FIGURES)


@dataclass
class FigureResults:
    """Every result the figures are drawn from (aggregates over all images, views of one)."""

    images: list[Any]
    prompt: str
    answers: list[str]
    dims: list[int]
    tau: float
    focus: int
    sinks: SinkResult
    heads: HeadScores
    received: ReceivedAttention
    contribution: ContributionResult
    ablation: AblationResult
    states: TokenStates
    text_maps: AttentionMaps
    knockout_maps: AttentionMaps
    contrast_maps: AttentionMaps
    var: VarAttention
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def focus_image(self) -> Any:
        return self.images[self.focus]


def contrast_heads(
    scores: HeadScores, n: int = 2
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The ``n`` heads with the highest and the ``n`` with the lowest mean r.

    Only heads in layers whose input holds a visual sink in every sample and
    that give the image at least the selection's minimum attention on average
    compete (r means nothing where there is no image attention).
    """
    stats = scores.per_sample()
    s_mean, r_mean = stats["s"].mean(0), stats["r"].mean(0)
    with_sinks = scores.has_visual_sink.all(0)
    candidates = [
        (float(r_mean[layer, head]), layer, head)
        for layer in range(r_mean.shape[0])
        for head in range(r_mean.shape[1])
        if bool(with_sinks[layer]) and float(s_mean[layer, head]) >= scores.min_image_attention
    ]
    if not candidates:  # no sink layer or no image attention: fall back to every head
        candidates = [
            (float(r_mean[layer, head]), layer, head)
            for layer in range(r_mean.shape[0])
            for head in range(r_mean.shape[1])
        ]
    candidates.sort(reverse=True)
    high = [(layer, head) for _, layer, head in candidates[:n]]
    low = [(layer, head) for _, layer, head in candidates[::-1][:n] if (layer, head) not in high]
    return high, low


def compute_results(
    model: LoadedModel,
    images: Sequence[ImageLike],
    *,
    prompt: str = DEFAULT_PROMPT,
    answers: Sequence[str] = ("yes", "no"),
    dims: Sequence[int] | None = None,
    tau: float = 20.0,
    rho: float = 0.5,
    p: float = 0.6,
    focus: int = 0,
    layer: int | None = None,
    n_queries: int = 4,
    draws: int = 5,
    show_progress: bool = True,
) -> FigureResults:
    """Run every analysis the figures need, each once.

    ``images`` all get ``prompt``. Aggregate results (sinks, heads, received
    attention, contribution, knock-outs) cover all images in one batch; the
    per-image views (hidden states, attention maps, head contrast, VAR) use
    ``images[focus]``. ``layer`` picks the layer of figures 1, 2 and 3d
    (default: the layer of the top-ranked image-centric head, else the middle
    layer among those holding visual sinks); VAR is shown on that head.
    """
    from analysis.ablation import KnockOut, ablate
    from analysis.capture import attention_maps, attention_received, pick_queries, token_states
    from analysis.contribution import residual_contribution
    from analysis.dims import sink_dims
    from analysis.heads import score_heads
    from analysis.sinks import find_sinks
    from analysis.tokens import build_batch, build_inputs
    from analysis.var import VarConfig, default_var_layers, var_attention

    images = list(images)
    if not images:
        raise ValueError("make_figures needs at least one image.")
    if not 0 <= focus < len(images):
        raise ValueError(f"focus={focus} but there are {len(images)} images.")
    steps = tqdm(total=10, desc="figures: inputs", disable=not show_progress, leave=False)

    def step(name: str) -> None:
        steps.update(1)
        steps.set_description(f"figures: {name}")

    per_image = [build_inputs(model, image, prompt) for image in images]
    batch = build_batch(model, [(image, prompt) for image in images])
    step("sink dims")
    chosen = sink_dims(model, per_image, dims=dims)
    step("sinks")
    sinks = find_sinks(model, batch, dims=chosen, tau=tau)
    step("heads")
    heads = score_heads(model, per_image, dims=chosen, tau=tau, rho=rho, show_progress=False)
    step("received attention")
    received = attention_received(model, batch, dims=chosen, tau=tau)
    step("residual contribution")
    contribution = residual_contribution(model, batch, dims=chosen, tau=tau)
    step("knock-outs")
    ablation = ablate(
        model,
        batch,
        targets=["sinks", "random", "nonsink"],
        answers=list(answers),
        dims=chosen,
        tau=tau,
        draws=draws,
    )
    step("hidden states")
    inputs = per_image[focus]
    # The strongest image-centric head in a layer VAR acts on (2 .. L-2 by default).
    var_layers = set(default_var_layers(model.n_layers))
    ranked = [row for row in heads.ranked() if int(row["layer"]) in var_layers]
    best = (int(ranked[0]["layer"]), int(ranked[0]["head"])) if ranked else None
    if layer is not None:
        map_layer = int(layer)
    elif best is not None:
        # The layer of the strongest image-centric head holds sinks (selection rule) and
        # shows both what sinks take and what the image-centric heads look at.
        map_layer = best[0]
    else:
        map_layer = plots.default_sink_layer(sinks)
    states = token_states(model, inputs, layer=map_layer, dims=chosen, tau=tau)
    step("attention maps")
    n_available = int(inputs.layouts[0].queries.sum())
    picks = pick_queries(n_available, n_queries)
    every = list(range(n_available))
    view = [(map_layer, None)]
    text_maps = attention_maps(model, inputs, views=view, queries=picks, dims=chosen, tau=tau)
    knock = KnockOut(model, inputs, target="sinks", dims=chosen, tau=tau)
    knockout_maps = attention_maps(
        model,
        inputs,
        views=view,
        queries=picks,
        dims=chosen,
        tau=tau,
        fwd_hooks=knock.fwd_hooks(),
    )
    step("head contrast")
    high, low = contrast_heads(heads)
    contrast_maps = attention_maps(
        model, inputs, views=[*high, *low], queries=every, dims=chosen, tau=tau
    )
    step("VAR")
    var_head = best if best is not None else high[0]
    config = VarConfig(p=p, rho=rho, tau=tau)
    var = var_attention(model, inputs, views=[var_head], dims=chosen, config=config, queries=every)
    steps.close()
    return FigureResults(
        images=images,
        prompt=prompt,
        answers=list(answers),
        dims=list(chosen),
        tau=float(tau),
        focus=focus,
        sinks=sinks,
        heads=heads,
        received=received,
        contribution=contribution,
        ablation=ablation,
        states=states,
        text_maps=text_maps,
        knockout_maps=knockout_maps,
        contrast_maps=contrast_maps,
        var=var,
        config={
            "model": model.describe(),
            "images": [_image_name(image) for image in images],
            "focus_image": _image_name(images[focus]),
            "prompt": prompt,
            "answers": list(answers),
            "dims": list(chosen),
            "tau": float(tau),
            "rho": rho,
            "p": p,
            "map_layer": map_layer,
            "query_picks": picks,
            "draws": draws,
            "contrast_heads": {"high_r": high, "low_r": low},
            "var_head": list(var_head),
            **provenance(),
        },
    )


def _image_name(image: Any) -> str:
    """An image path as given, relative to the working directory when inside it."""
    if isinstance(image, str | Path):
        path = Path(image)
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)
    return type(image).__name__


def draw_figures(
    results: FigureResults, names: Sequence[str] | None = None
) -> dict[str, go.Figure]:
    """Draw the named figures (default: all of :data:`FIGURES`) from computed results."""
    image = results.focus_image
    sample = results.focus
    draw: dict[str, Callable[[], go.Figure]] = {
        "fig1_text_attention": lambda: plots.text_attention_overlay(results.text_maps, image),
        "fig1_sink_map": lambda: plots.phi_overlay(
            results.sinks, image, sample=sample, layer=results.config.get("map_layer")
        ),
        "fig2_hidden_states": lambda: plots.hidden_state_magnitudes(results.states),
        "fig3a_phi_vs_attention": lambda: plots.phi_vs_attention(results.received),
        "fig3b_knockout": lambda: plots.knockout_bars(results.ablation),
        "fig3c_contribution": lambda: plots.contribution_bars(results.contribution),
        "fig3d_without_sinks": lambda: plots.attention_comparison(
            results.text_maps, results.knockout_maps, image
        ),
        "fig4_head_contrast": lambda: plots.head_contrast(
            results.contrast_maps, results.heads, image
        ),
        "fig5_var": lambda: plots.var_before_after(results.var, image),
        "heads_layer_head": lambda: plots.head_maps(results.heads),
        "sink_counts": lambda: plots.sink_counts(results.sinks),
    }
    chosen = FIGURE_NAMES if names is None else tuple(names)
    unknown = [name for name in chosen if name not in draw]
    if unknown:
        raise ValueError(f"Unknown figure(s) {unknown}; choose from {list(FIGURE_NAMES)}.")
    return {name: draw[name]() for name in chosen}


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


def make_figures(
    model: LoadedModel,
    images: Sequence[ImageLike],
    out_dir: str | Path,
    *,
    prompt: str = DEFAULT_PROMPT,
    answers: Sequence[str] = ("yes", "no"),
    dims: Sequence[int] | None = None,
    tau: float = 20.0,
    rho: float = 0.5,
    p: float = 0.6,
    focus: int = 0,
    layer: int | None = None,
    n_queries: int = 4,
    draws: int = 5,
    names: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "html", "json"),
    scale: float = 2.0,
    command: str = "vsink figures",
    show_progress: bool = True,
) -> FigureSet:
    """Compute every result once, draw every figure and write it to ``out_dir``.

    See :func:`compute_results` for the analysis parameters; ``names``
    restricts the figures, ``formats`` the files written per figure, ``scale``
    the PNG resolution (2 = twice the figure's pixel size). Fails before any
    model run on an unknown figure name or format.
    """
    unknown = set(formats) - {"png", "html", "json"}
    if unknown:
        raise ValueError(f"Unknown format(s) {sorted(unknown)}; use png, html, json.")
    bad = [name for name in names or () if name not in FIGURE_NAMES]
    if bad:
        raise ValueError(f"Unknown figure(s) {bad}; choose from {list(FIGURE_NAMES)}.")
    results = compute_results(
        model,
        images,
        prompt=prompt,
        answers=answers,
        dims=dims,
        tau=tau,
        rho=rho,
        p=p,
        focus=focus,
        layer=layer,
        n_queries=n_queries,
        draws=draws,
        show_progress=show_progress,
    )
    return write_figures(
        results,
        out_dir,
        names=names,
        formats=formats,
        scale=scale,
        command=command,
        show_progress=show_progress,
    )


def write_figures(
    results: FigureResults,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "html", "json"),
    scale: float = 2.0,
    command: str = "vsink figures",
    show_progress: bool = True,
) -> FigureSet:
    """Draw figures from computed results and write them (PNG, HTML, JSON) plus an index."""
    unknown = set(formats) - {"png", "html", "json"}
    if unknown:
        raise ValueError(f"Unknown format(s) {sorted(unknown)}; use png, html, json.")
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
            files["png"] = plots.to_png(fig, out / f"{name}.png", scale=scale)
        if "html" in formats:
            files["html"] = plots.write_html(
                fig, out / f"{name}.html", include_plotlyjs="directory"
            )
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
