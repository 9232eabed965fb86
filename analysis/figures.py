"""Every paper figure from one call: compute each result once, draw, write PNG + HTML + JSON.

:func:`make_figures` runs the analyses on a set of images (sinks, heads,
received attention, residual contribution, knock-outs on all of them; the
per-image views on one "focus" image), draws every figure of
:mod:`analysis.viz` and writes, per figure, ``NAME.png`` (matplotlib, no
browser), ``NAME.html`` (interactive, offline: one shared ``plotly.min.js``
in the folder) and ``NAME.json`` (the result data it was drawn from, with
the configuration and provenance), plus ``index.html``, ``index.json`` and
``README.md``. :func:`compute_results` and :func:`draw_figures` are the two
halves, reused by :mod:`analysis.report`; :mod:`analysis.figure_folder` writes
the files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from analysis import viz
from analysis.config import DRAWS, MIN_IMAGE_ATTENTION, PNG_SCALE, RHO, TAU, P
from analysis.errors import UserInputError
from analysis.results import provenance

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from analysis.ablation import AblationResult
    from analysis.capture import AttentionMaps, ReceivedAttention, TokenStates
    from analysis.contribution import ContributionResult
    from analysis.figure_folder import FigureSet
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
        f"image-centric (s >= {MIN_IMAGE_ATTENTION:g} and r >= rho) and the mean visual "
        "non-sink ratio r.",
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
    tau: float = TAU,
    rho: float = RHO,
    p: float = P,
    focus: int = 0,
    layer: int | None = None,
    n_queries: int = 4,
    draws: int = DRAWS,
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
        raise UserInputError("make_figures needs at least one image.")
    if not 0 <= focus < len(images):
        raise UserInputError(f"focus={focus} but there are {len(images)} images.")
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
        map_layer = viz.default_sink_layer(sinks)
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
        "fig1_text_attention": lambda: viz.text_attention_overlay(results.text_maps, image),
        "fig1_sink_map": lambda: viz.phi_overlay(
            results.sinks, image, sample=sample, layer=results.config.get("map_layer")
        ),
        "fig2_hidden_states": lambda: viz.hidden_state_magnitudes(results.states),
        "fig3a_phi_vs_attention": lambda: viz.phi_vs_attention(results.received),
        "fig3b_knockout": lambda: viz.knockout_bars(results.ablation),
        "fig3c_contribution": lambda: viz.contribution_bars(results.contribution),
        "fig3d_without_sinks": lambda: viz.attention_comparison(
            results.text_maps, results.knockout_maps, image
        ),
        "fig4_head_contrast": lambda: viz.head_contrast(
            results.contrast_maps, results.heads, image
        ),
        "fig5_var": lambda: viz.var_before_after(results.var, image),
        "heads_layer_head": lambda: viz.head_maps(results.heads),
        "sink_counts": lambda: viz.sink_counts(results.sinks),
    }
    chosen = FIGURE_NAMES if names is None else tuple(names)
    unknown = [name for name in chosen if name not in draw]
    if unknown:
        raise UserInputError(f"Unknown figure(s) {unknown}; choose from {list(FIGURE_NAMES)}.")
    return {name: draw[name]() for name in chosen}


def make_figures(
    model: LoadedModel,
    images: Sequence[ImageLike],
    out_dir: str | Path,
    *,
    prompt: str = DEFAULT_PROMPT,
    answers: Sequence[str] = ("yes", "no"),
    dims: Sequence[int] | None = None,
    tau: float = TAU,
    rho: float = RHO,
    p: float = P,
    focus: int = 0,
    layer: int | None = None,
    n_queries: int = 4,
    draws: int = DRAWS,
    names: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "html", "json"),
    scale: float = PNG_SCALE,
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
        raise UserInputError(f"Unknown format(s) {sorted(unknown)}; use png, html, json.")
    bad = [name for name in names or () if name not in FIGURE_NAMES]
    if bad:
        raise UserInputError(f"Unknown figure(s) {bad}; choose from {list(FIGURE_NAMES)}.")
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
    from analysis.figure_folder import write_figures  # it imports this module

    return write_figures(
        results,
        out_dir,
        names=names,
        formats=formats,
        scale=scale,
        command=command,
        show_progress=show_progress,
    )
