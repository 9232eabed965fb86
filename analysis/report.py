"""One self-contained HTML page (works offline) about one image: sinks, heads, ablation, VAR.

:func:`make_report` computes the same results as :mod:`analysis.figures` for a
single image, adds the greedy answer with and without VAR, and writes one HTML
file with plotly.js inlined once, summary tables and every interactive view.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import viz
from analysis.config import MAX_NEW_TOKENS, REPORT_DRAWS, RHO, TAU, P
from analysis.figures import DEFAULT_PROMPT, FIGURES, FigureResults, compute_results, draw_figures
from analysis.fsio import write_atomic
from analysis.results import to_jsonable

if TYPE_CHECKING:
    from analysis.loading import LoadedModel
    from analysis.tokens import ImageLike

SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "sinks",
        "Sink tokens",
        (
            "fig1_sink_map",
            "sink_counts",
            "fig1_text_attention",
            "fig2_hidden_states",
            "fig3a_phi_vs_attention",
        ),
    ),
    ("heads", "Heads", ("heads_layer_head", "fig4_head_contrast")),
    ("ablation", "Ablation", ("fig3b_knockout", "fig3c_contribution", "fig3d_without_sinks")),
    ("var", "VAR", ("fig5_var",)),
)

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1500px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.fig{margin:1em 0 2em}.fig p{color:#555;max-width:60em}nav a{margin-right:1em}
.grid{display:flex;flex-wrap:wrap;gap:2em}code{background:#f5f5f5;padding:0 .2em}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_tables(results: FigureResults, answers: dict[str, str]) -> str:
    sinks = results.sinks.summary()
    per_layer = _table(
        ("layer", "visual sinks", "text sinks", "BOS is a sink"),
        [
            (
                row["layer"],
                f"{row['visual_sinks_mean']:.0f}",
                f"{row['text_sinks_mean']:.0f}",
                "yes" if row["bos_is_sink"] else "no",
            )
            for row in sinks["per_layer"]
        ],
    )
    heads = _table(
        ("layer", "head", "queries selected", "mean s", "mean r"),
        [
            (
                row["layer"],
                row["head"],
                f"{row['selected_mean']:.2f}",
                f"{row['s_mean']:.2f}",
                f"{row['r_mean']:.2f}",
            )
            for row in results.heads.ranked(top=8)
        ],
    )
    ablation = results.ablation
    delta = ablation.delta_logprob()
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(ablation.conditions):
        groups.setdefault(name.split("[")[0], []).append(index)
    knock = _table(
        (
            "condition",
            f"delta log p('{ablation.answers[0]}')",
            "KL",
            "greedy next token",
            "runs",
        ),
        [
            (
                name,
                f"{float(delta[idx].mean()):+.4f}",
                f"{float(ablation.kl[idx].mean()):.4f}",
                ", ".join(sorted({ablation.greedy[i][0] for i in idx})),
                len(idx),
            )
            for name, idx in groups.items()
        ],
    )
    record = results.var.record
    var = _table(
        ("", "value"),
        [
            ("answer without VAR", answers["baseline"]),
            ("answer with VAR", answers["var"]),
            ("(layer, head, query) rows changed (prefill)", sum(record.prefill_changed)),
            ("attention mass moved (prefill)", f"{sum(record.prefill_mass):.3f}"),
            ("VAR layers", ", ".join(str(x) for x in record.layers)),
        ],
    )
    contribution = {
        name: results.contribution.group_mean(name)
        for name in ("contribution", "attention", "value_norm")
    }
    contrib = _table(
        ("key group", "contribution per pair", "attention per key", "value norm"),
        [
            (
                group,
                f"{contribution['contribution'][group]:.3g}",
                f"{contribution['attention'][group]:.3g}",
                f"{contribution['value_norm'][group]:.3g}",
            )
            for group in results.contribution.groups
        ],
    )
    sample = sinks["samples"][0]
    return (
        f"<p>{sample['visual_sinks_consensus']} of {sample['n_visual']} visual tokens are sinks "
        f"in most layers from 2 on; text sinks: "
        f"{html.escape(', '.join(sample['text_sink_tokens']) or 'none')}. Image-centric heads: "
        f"{html.escape(str(results.heads.image_centric_heads()))}.</p>"
        "<div class='grid'>"
        f"<div><h3>Sinks per layer input</h3>{per_layer}</div>"
        f"<div><h3>Top heads by selection</h3>{heads}</div>"
        f"<div><h3>Knock-out (all layers, pre-softmax)</h3>{knock}</div>"
        f"<div><h3>VAR</h3>{var}</div>"
        f"<div><h3>Residual contribution (mean over layers, heads)</h3>{contrib}</div>"
        "</div>"
    )


def make_report(
    model: LoadedModel,
    image: ImageLike,
    prompt: str = DEFAULT_PROMPT,
    out_path: str | Path = "report.html",
    *,
    answers: Sequence[str] = ("yes", "no"),
    dims: Sequence[int] | None = None,
    tau: float = TAU,
    rho: float = RHO,
    p: float = P,
    layer: int | None = None,
    draws: int = REPORT_DRAWS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    show_progress: bool = True,
) -> Path:
    """Analyse ``image`` with ``prompt`` and write one offline HTML page to ``out_path``.

    ``answers`` are scored by the knock-outs (log-probability of the first);
    ``dims`` default to the registry or discovery on this image.
    """
    import plotly.offline

    from analysis.generation import generate
    from analysis.tokens import build_inputs
    from analysis.var import VarConfig, VarIntervention

    results = compute_results(
        model,
        [image],
        prompt=prompt,
        answers=answers,
        dims=dims,
        tau=tau,
        rho=rho,
        p=p,
        layer=layer,
        draws=draws,
        show_progress=show_progress,
    )
    inputs = build_inputs(model, image, prompt)
    baseline = generate(model, inputs, max_new_tokens=max_new_tokens).texts[0]
    intervention = VarIntervention(
        model, inputs, dims=results.dims, config=VarConfig(p=p, rho=rho, tau=tau)
    )
    with_var = generate(
        model, inputs, max_new_tokens=max_new_tokens, fwd_hooks=intervention.fwd_hooks()
    ).texts[0]
    figures = draw_figures(results)
    specs = {spec.name: spec for spec in FIGURES}
    config = results.config
    name = config["images"][0]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>vsink report: {html.escape(Path(name).name)}</title>",
        f"<style>{_STYLE}</style>",
        # plotly.js once, inline: the page needs no network and no sibling files.
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>Visual attention sinks: {html.escape(Path(name).name)}</h1>",
        f"<p>Model <code>{html.escape(config['model']['name_or_path'])}</code> "
        f"({html.escape(config['model']['family'])}, {config['model']['n_layers']} layers, "
        f"{config['model']['n_heads']} heads, d_model {config['model']['d_model']}). "
        f"Prompt: <em>{html.escape(prompt)}</em>. Sink dims {config['dims']}, tau "
        f"{config['tau']:g}, rho {rho:g}, VAR p {p:g}.</p>",
        "<nav>"
        + "".join(
            f"<a href='#{key}'>{html.escape(title)}</a>"
            for key, title in (("summary", "Summary"), *((k, t) for k, t, _ in SECTIONS))
        )
        + "</nav>",
        "<h2 id='summary'>Summary</h2>",
        _summary_tables(results, {"baseline": baseline, "var": with_var}),
    ]
    for key, title, names in SECTIONS:
        parts.append(f"<h2 id='{key}'>{html.escape(title)}</h2>")
        for figure_name in names:
            spec = specs[figure_name]
            parts.append(
                f"<div class='fig'><h3>{html.escape(spec.title)} ({html.escape(spec.paper)})</h3>"
                f"<p>{html.escape(spec.description)}</p>{viz.figure_div(figures[figure_name])}</div>"
            )
    parts.append(
        "<h2>Configuration and provenance</h2><details><summary>show</summary><pre>"
        + html.escape(json.dumps(to_jsonable(config), indent=2))
        + "</pre></details></body></html>"
    )
    return write_atomic(out_path, "\n".join(parts))
