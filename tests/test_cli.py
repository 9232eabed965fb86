"""The figure, report and contribution commands on the demo model."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from analysis.cli import app

IMAGE = "analysis/demo/images/demo_00.png"


def test_contribution_command_reports_small_sink_contribution(tmp_path):
    out = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["contribution", "--images", IMAGE, "--json", str(out)])
    assert result.exit_code == 0, result.output
    means = json.loads(out.read_text())["means"]["contribution"]
    assert means["visual sink"] < 0.1 * means["visual non-sink"]


def test_figures_command_writes_png_html_json(tmp_path):
    out = tmp_path / "figs"
    result = CliRunner().invoke(
        app,
        ["figures", "--images", IMAGE, "--out", str(out), "--only", "fig3c_contribution"],
    )
    assert result.exit_code == 0, result.output
    for suffix in ("png", "html", "json"):
        assert (out / f"fig3c_contribution.{suffix}").stat().st_size > 1000
    data = json.loads((out / "fig3c_contribution.json").read_text())
    assert data["config"]["model"]["family"] == "llava"


def test_figures_command_rejects_unknown_figure(tmp_path):
    result = CliRunner().invoke(app, ["figures", "--out", str(tmp_path), "--only", "fig99"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_report_command_writes_one_offline_page(tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["report", "--image", IMAGE, "--out", str(out), "--draws", "1"]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script src=" not in page.replace('<script src="data:', "")
    assert out.stat().st_size > 1_000_000  # plotly.js inlined once
