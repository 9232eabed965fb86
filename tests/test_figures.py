"""make_figures and make_report end to end on the demo model (two images, one random draw)."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from analysis.figures import FIGURE_NAMES, FIGURES, make_figures
from analysis.loading import DEMO_MODEL_DIR
from analysis.report import make_report

DEMO = DEMO_MODEL_DIR.parent
TRUTH = json.loads((DEMO / "ground_truth.json").read_text())
IMAGES = sorted((DEMO / "images").glob("*.png"))[:2]


@pytest.fixture(scope="module")
def demo(demo_model):
    return demo_model


def test_make_figures_writes_every_figure(demo, tmp_path):
    out = tmp_path / "figures"
    result = make_figures(
        demo, IMAGES, out, dims=TRUTH["sink_dims"], draws=1, scale=1.0, show_progress=False
    )
    assert [item.spec.name for item in result.figures] == list(FIGURE_NAMES)
    for name in FIGURE_NAMES:
        for suffix in ("png", "html", "json"):
            assert (out / f"{name}.{suffix}").is_file(), f"{name}.{suffix}"
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG"
        page = (out / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in page  # one shared copy, works offline
        payload = json.loads((out / f"{name}.json").read_text())
        assert payload["figure"] == name
        assert payload["config"]["dims"] == TRUTH["sink_dims"]
        assert "transformers" in payload["config"]["versions"]
        assert payload["results"]
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert not re.search(r"<script[^>]+src=\"https?:", (out / "fig5_var.html").read_text())
    sinks = json.loads((out / "sink_counts.json").read_text())["results"]["sinks"]
    assert sinks["tau"] == 20.0
    assert len(sinks["tensors"]["visual"]) == len(IMAGES)  # visual sinks per sample and layer
    readme = (out / "README.md").read_text()
    for spec in FIGURES:
        assert f"`{spec.name}`" in readme
        assert spec.paper in readme
    assert "vsink figures" in readme
    index = json.loads((out / "index.json").read_text())
    assert [f["name"] for f in index["figures"]] == list(FIGURE_NAMES)
    with pytest.raises(ValueError, match="Unknown figure"):
        make_figures(demo, IMAGES, out, names=["fig9"], show_progress=False)


def test_report_is_one_offline_page(demo, tmp_path):
    path = make_report(
        demo,
        IMAGES[0],
        "Is there a red object in the image?",
        tmp_path / "report.html",
        dims=TRUTH["sink_dims"],
        draws=1,
        max_new_tokens=2,
        show_progress=False,
    )
    page = path.read_text()
    assert list(tmp_path.iterdir()) == [path]  # nothing next to it
    assert path.stat().st_size > 3_000_000  # plotly.js inlined
    assert page.count("Plotly.newPlot(") == len(FIGURE_NAMES)
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=\"https?:", page)
    for section in ("summary", "sinks", "heads", "ablation", "var"):
        assert f"id='{section}'" in page
    assert "answer with VAR" in page
    assert "[(2, 1), (3, 2)]" in page  # the planted image-centric heads are found
