"""Plot functions on demo-model results (ground truth known) and on tiny models of each family."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from conftest import make_image
from PIL import Image

from analysis import plots
from analysis.capture import attention_maps, pick_queries
from analysis.figures import compute_results, draw_figures
from analysis.loading import DEMO_MODEL_DIR
from analysis.tokens import build_inputs

DEMO = DEMO_MODEL_DIR.parent
TRUTH = json.loads((DEMO / "ground_truth.json").read_text())
IMAGES = sorted((DEMO / "images").glob("*.png"))[:2]
PLANTED_HEADS = {tuple(h) for h in TRUTH["image_centric_heads"]}


@pytest.fixture(scope="module")
def results(demo_model):
    demo = demo_model
    return compute_results(demo, IMAGES, dims=TRUTH["sink_dims"], draws=2, show_progress=False)


@pytest.fixture(scope="module")
def figures(results):
    return draw_figures(results)


def planted_cells(image_index: int = 0) -> set[tuple[int, int]]:
    return {tuple(c) for c in TRUTH["images"][IMAGES[image_index].name]["sink_patches"]}


def marked_cells(trace: go.Scatter) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in trace.customdata}


def traces(fig: go.Figure, kind: str, name: str | None = None) -> list:
    return [
        t for t in fig.data if t.type == kind and (name is None or (t.name or "").startswith(name))
    ]


def object_cells(image_index: int = 0) -> set[tuple[int, int]]:
    grid = TRUTH["images"][IMAGES[image_index].name]["patch_grid"]
    return {(r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v == 1}


def test_text_attention_overlay_marks_the_planted_sinks(figures, results):
    fig = figures["fig1_text_attention"]
    maps = results.text_maps
    heatmaps = traces(fig, "heatmap")
    assert len(heatmaps) == len(maps.query_positions[0]) >= 2  # one panel per text token
    assert all(np.asarray(h.z).shape == (24, 24) for h in heatmaps)
    assert len({h.zmax for h in heatmaps}) == 1  # one colour scale
    sinks = traces(fig, "scatter", "visual sink")
    assert len(sinks) == len(heatmaps)
    assert all(marked_cells(t) == planted_cells() for t in sinks)
    assert len(traces(fig, "image")) == len(heatmaps)
    # The planted sinks draw more attention than any other visual token, for every text token.
    for heatmap in heatmaps:
        z = np.asarray(heatmap.z, dtype=float)
        on_sinks = min(z[r, c] for r, c in planted_cells())
        others = max(z[r, c] for r in range(24) for c in range(24) if (r, c) not in planted_cells())
        assert on_sinks > others


def test_phi_overlay_and_sink_counts_match_the_ground_truth(figures):
    fig = figures["fig1_sink_map"]
    assert marked_cells(traces(fig, "scatter", "visual sink")[0]) == planted_cells()
    assert "phi" in traces(fig, "heatmap")[0].colorbar.title.text
    counts = figures["sink_counts"]
    visual = traces(counts, "bar", "visual")[0]
    expected = np.mean([len(planted_cells(i)) for i in range(len(IMAGES))])
    assert list(visual.y[:2]) == [0, 0]
    assert all(v == pytest.approx(expected) for v in visual.y[2:])
    assert counts.layout.yaxis.title.text.startswith("tokens with phi")


def test_hidden_state_magnitudes_label_the_sink_dims(figures, results):
    fig = figures["fig2_hidden_states"]
    assert results.states.labels == ["BOS", "visual sink", "visual non-sink"]
    bars = traces(fig, "bar")
    assert all(len(b.y) == 1024 for b in bars)
    for bar, label in zip(bars, results.states.labels, strict=True):
        top = set(np.argsort(np.asarray(bar.y))[-2:].tolist())
        assert (top == set(TRUTH["sink_dims"])) == (label != "visual non-sink")
    labels = traces(fig, "scatter", "sink dims")
    assert all(list(t.x) == TRUTH["sink_dims"] for t in labels)
    assert list(labels[0].text) == [f"dim {d}" for d in TRUTH["sink_dims"]]
    # The same x range on every panel, so a dim sits at one x in the static PNG too.
    ranges = {tuple(fig.layout[name].range) for name in fig.layout if name.startswith("xaxis")}
    assert ranges == {(-0.5, 1023.5)}


def test_phi_vs_attention_separates_sinks(figures, results):
    fig = figures["fig3a_phi_vs_attention"]
    by_group = {t.name.split(" (")[0]: t for t in traces(fig, "scatter")}
    assert set(by_group) == {"visual sink", "visual non-sink", "text", "BOS"}
    assert min(by_group["visual sink"].x) >= results.tau > max(by_group["visual non-sink"].x)
    assert np.median(by_group["visual sink"].y) > 10 * np.median(by_group["visual non-sink"].y)
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.shapes[0].x0 == results.tau


def test_knockout_bars_have_cis_over_samples_and_draws(figures, results):
    fig = figures["fig3b_knockout"]
    bars = traces(fig, "bar")
    assert [b.name for b in bars[:3]] == [
        "visual sinks",
        "random visual (same count)",
        "all visual non-sinks",
    ]
    for bar in bars:
        assert bar.error_y.array[0] >= 0
        assert bar.error_y.arrayminus[0] >= 0
    delta = results.ablation.delta_logprob().numpy()
    random_rows = [i for i, c in enumerate(results.ablation.conditions) if c.startswith("random")]
    assert bars[1].y[0] == pytest.approx(delta[random_rows].mean(), abs=1e-6)
    points = traces(fig, "scatter")
    assert len(points[1].y) == len(random_rows) * len(IMAGES)  # one dot per (draw, sample)


def test_contribution_bars_show_sinks_write_less(figures, results):
    fig = figures["fig3c_contribution"]
    panel = {t.name: np.asarray(t.y, dtype=float) for t in traces(fig, "bar") if t.xaxis == "x"}
    assert set(panel) == set(results.contribution.groups)
    assert (panel["visual sink"] < panel["visual non-sink"]).all()
    attention = {
        t.name: np.asarray(t.y, dtype=float) for t in traces(fig, "bar") if t.xaxis == "x2"
    }
    assert (attention["visual sink"] > attention["visual non-sink"]).all()


def test_without_sinks_map_moves_attention_to_the_object(figures, results):
    fig = figures["fig3d_without_sinks"]
    before, after = (np.asarray(h.z, dtype=float) for h in traces(fig, "heatmap"))
    assert max(after[r, c] for r, c in planted_cells()) < 1e-6
    obj = object_cells()
    mean_object = np.mean([after[r, c] for r, c in obj])
    background = [
        after[r, c]
        for r in range(24)
        for c in range(24)
        if (r, c) not in obj and (r, c) not in planted_cells()
    ]
    assert mean_object > 2 * np.mean(background)
    assert before.max() == pytest.approx(max(before[r, c] for r, c in planted_cells()))


def test_head_maps_outline_the_planted_image_centric_heads(figures):
    fig = figures["heads_layer_head"]
    selected = traces(fig, "scatter", "image-centric")
    assert selected
    assert all({tuple(c) for c in t.customdata} >= PLANTED_HEADS for t in selected)
    fraction, ratio = traces(fig, "heatmap")
    assert np.asarray(fraction.z).shape == (TRUTH["num_layers"], TRUTH["num_heads"])
    assert np.isnan(np.asarray(ratio.z, dtype=float)[:2]).all()  # no visual sink before layer 2
    assert fig.layout.yaxis.autorange == "reversed"


def test_head_contrast_puts_planted_heads_high(figures, results):
    high = results.config["contrast_heads"]["high_r"]
    assert {tuple(h) for h in high} == PLANTED_HEADS
    fig = figures["fig4_head_contrast"]
    assert len(traces(fig, "heatmap")) == 4
    titles = [a.text for a in fig.layout.annotations]
    for layer, head in high:
        assert any(t.startswith(f"L{layer} H{head}: r = 0.") for t in titles)


def test_var_before_after_moves_attention_from_sinks_to_the_object(figures, results):
    assert tuple(results.config["var_head"]) in PLANTED_HEADS
    fig = figures["fig5_var"]
    before, after, change = (np.asarray(h.z, dtype=float) for h in traces(fig, "heatmap"))
    assert np.allclose(change, after - before, atol=1e-6)
    assert all(change[r, c] < 0 for r, c in planted_cells())
    assert all(change[r, c] > 0 for r, c in object_cells())
    assert results.var.record.total_changed > 0


def test_every_figure_renders_to_a_legible_png(figures, tmp_path):
    for name, fig in figures.items():
        path = plots.to_png(fig, tmp_path / f"{name}.png", scale=1.0)
        with Image.open(path) as png:
            png.load()
            assert png.format == "PNG"
            assert png.size == (fig.layout.width, fig.layout.height)
            assert png.width >= 600
            pixels = np.asarray(png.convert("RGB"))
        assert path.stat().st_size > 15_000, name
        colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
        assert len(colours) > 50, name  # text, data and colour bars, not a blank canvas
        assert (pixels < 128).any(), name  # dark text is present


def test_png_renderer_on_generic_figure(tmp_path):
    fig = make_generic_figure()
    path = plots.to_png(fig, tmp_path / "generic.png", scale=1.0)
    with Image.open(path) as png:
        assert png.size == (700, 400)
    with pytest.raises(NotImplementedError, match="pie"):
        plots.to_png(go.Figure(go.Pie(values=[1, 2])), tmp_path / "pie.png")


def make_generic_figure() -> go.Figure:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("bars", "heat"))
    fig.add_trace(go.Bar(x=["a", "b"], y=[1, 2], error_y={"array": [0.1, 0.2]}), row=1, col=1)
    fig.add_trace(go.Bar(x=["a", "b"], y=[2, 1], name="second"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[0, 1], y=[1, 3], mode="lines+markers"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=[[1, np.nan], [3, 4]], colorscale="RdBu"), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(width=700, height=400, title="generic", barmode="group")
    return fig


def test_write_html_shares_one_plotly_js(tmp_path):
    fig = make_generic_figure()
    plots.write_html(fig, tmp_path / "a.html", include_plotlyjs="directory")
    plots.write_html(fig, tmp_path / "b.html", include_plotlyjs="directory")
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert (tmp_path / "a.html").stat().st_size < 100_000
    assert 'src="plotly.min.js"' in (tmp_path / "a.html").read_text()


@pytest.mark.parametrize("name", ["llava_next", "gemma3"])
def test_overlays_follow_each_familys_grid(tiny_models, name, tmp_path):
    model = tiny_models[name]
    image = make_image(30, 50)  # not square: NeXT unpads its anyres grid
    inputs = build_inputs(model, image, "Is there a red object in the image?")
    geometry = inputs.layouts[0].geometry
    n_queries = int(inputs.layouts[0].queries.sum())
    # Random weights have no sinks: a low tau marks some tokens so the markers are exercised.
    maps = attention_maps(
        model,
        inputs,
        views=[(1, None), (1, 0)],
        queries=pick_queries(n_queries, 2),
        dims=[0, 1],
        tau=1.0,
    )
    for tile in [None, *(g.tile for g in geometry.grids)]:
        spec = geometry.grid(0, tile)
        fig = plots.text_attention_overlay(maps, image, tile=tile)
        for heatmap in traces(fig, "heatmap"):
            assert np.asarray(heatmap.z).shape == (spec.rows, spec.cols)
            assert not np.isnan(np.asarray(heatmap.z, dtype=float)).any()  # every cell has a token
        flags = geometry.to_grid(maps.visual_sinks(0, 0).float(), tile=spec.tile) > 0
        expected = {tuple(c) for c in torch.nonzero(flags).tolist()}
        for marker in traces(fig, "scatter", "visual sink"):
            assert marked_cells(marker) == expected
        assert fig.layout.xaxis.range == (0, 50)
        assert fig.layout.yaxis.range == (30, 0)
    if name == "llava_next":
        assert [g.name for g in geometry.grids] == ["base", "anyres"]
        assert geometry.grid(0).cols != geometry.grid(0, 0).cols
    fig = plots.head_contrast(maps, None, image)
    path = plots.to_png(fig, tmp_path / f"{name}.png", scale=1.0)
    assert path.stat().st_size > 10_000
