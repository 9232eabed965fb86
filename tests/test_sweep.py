"""vsink sweep: grid grammar, conditions, rows and the figure, on the demo model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from analysis import cli
from analysis.plots import sweep_figure
from analysis.sweep import grid_conditions, parse_grid, sweep_rows


def test_parse_grid_ranges_and_lists():
    grid = parse_grid("p=0.2:0.8:0.2,rho=0.3,0.5,0.8")
    assert grid == {"p": [0.2, 0.4, 0.6, 0.8], "rho": [0.3, 0.5, 0.8]}
    assert parse_grid("rho=0.5") == {"rho": [0.5]}
    assert parse_grid("p=0.1:0.3:0.1,0.9") == {"p": [0.1, 0.2, 0.3, 0.9]}
    specs = grid_conditions({"p": [0.2, 0.4], "rho": [0.5, 0.8]})
    assert specs == [
        "var:p=0.2,rho=0.5",
        "var:p=0.2,rho=0.8",
        "var:p=0.4,rho=0.5",
        "var:p=0.4,rho=0.8",
    ]
    assert grid_conditions({"p": [0.3]}, "var:to=text") == ["var:to=text,p=0.3"]
    assert grid_conditions({"p": [0.3]}, "var-all-heads") == ["var-all-heads:p=0.3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("0.2,p=0.3", "no key before it"),
        ("q=0.2", "use p, rho"),
        ("p=0.2,p=0.3", "twice"),
        ("p=0.8:0.2:0.2", "stop >= start"),
        ("p=0.2:0.8", "start:stop:step"),
        ("p=x", "not a number"),
        ("p=0.2,0.2", "a value twice"),
        ("p=0:1:0.001", "points"),
    ],
)
def test_parse_grid_refuses_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(spec)


def test_sweep_rows_and_figure_by_hand():
    summary = {
        "conditions": {
            "baseline": {"logprob": {"accuracy": {"value": 0.5, "lo": 0.4, "hi": 0.6}}},
            "var:p=0.2": {
                "logprob": {
                    "accuracy": {"value": 0.6, "lo": 0.5, "hi": 0.7},
                    "vs_baseline": {"delta_accuracy": {"value": 0.1, "lo": 0.0, "hi": 0.2}},
                }
            },
        }
    }
    conditions = [
        {"name": "baseline", "kind": "baseline"},
        {"name": "var:p=0.2", "kind": "var", "var": {"p": 0.2, "rho": 0.5}},
    ]
    rows = sweep_rows(summary, conditions)
    assert rows[0]["setting"] is None
    assert rows[1]["setting"] == {"p": 0.2, "rho": 0.5}
    assert rows[1]["delta"]["value"] == 0.1
    fig = sweep_figure(rows)
    line = next(t for t in fig.data if t.name == "rho=0.5")
    assert list(line.y) == [0.6]
    assert list(line.error_y.array) == pytest.approx([0.1])
    assert any(t.name.startswith("baseline 0.5 [0.4, 0.6]") for t in fig.data)
    with pytest.raises(ValueError, match="No condition"):
        sweep_rows(summary, conditions, metric="f1")


@pytest.fixture
def runner(demo_model, monkeypatch):
    monkeypatch.setattr(cli, "load", lambda *args, **kwargs: demo_model)
    return CliRunner()


def test_sweep_on_the_demo_is_one_resumable_run(runner, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--grid", "p=0.3:0.6:0.3,rho=0.5,0.8", "--out", str(out), "--limit", "4"]
    args += ["--dims", "337,771", "--no-progress", "--n-boot", "100", "--batch-size", "2"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in manifest["conditions"]] == [
        "baseline",
        "var:p=0.3",
        "var:p=0.3,rho=0.8",
        "var",
        "var:rho=0.8",
    ]
    summary = json.loads((out / "summary.json").read_text())
    for name, entry in summary["conditions"].items():
        # The demo answers its 4 first questions right whatever the setting.
        assert entry["logprob"]["accuracy"]["value"] == 1.0, name
    assert (out / "sweep.html").stat().st_size > 0
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = (out / "records.jsonl").read_text()
    assert len(records.splitlines()) == 4 * 5
    again = runner.invoke(cli.app, args)  # resumed: nothing left to do, same records
    assert again.exit_code == 0, again.output
    assert (out / "records.jsonl").read_text() == records
    bad = runner.invoke(cli.app, [*args[:2], "p=0.2:0.1:0.1", *args[3:]])
    assert bad.exit_code == 2
    assert "stop >= start" in bad.output
