"""The condition registry: grammar, labels, the manifest layout of earlier runs, dispatch."""

from __future__ import annotations

import json

import pytest

from analysis.ablations import Variant
from analysis.config import VarConfig
from analysis.evaluation import parse_conditions
from analysis.interventions import registry
from analysis.interventions.base import ConditionError, ParseContext
from analysis.interventions.knockout import KnockOutSpec
from analysis.interventions.var import VarSpec
from analysis.interventions.var_ablations import VarAblationSpec
from analysis.interventions.var_text import VarTextSpec

PAPER_VAR = VarConfig().to_dict() | {"layers": None}


def test_manifest_layout_of_earlier_runs_is_kept_and_read_back():
    """The entries earlier runs wrote (their resume check compares them verbatim)."""
    written = [
        {"name": "baseline", "kind": "baseline"},
        {"name": "var", "kind": "var", "var": PAPER_VAR},
        {
            "name": "var:p=0.3,to=text",
            "kind": "var",
            "var": PAPER_VAR | {"p": 0.3},
            "variant": {"rows": "image", "to": "text"},
        },
        {
            "name": "var:rows=all",
            "kind": "var",
            "var": PAPER_VAR,
            "variant": {"rows": "all", "to": "nonsink"},
        },
        {
            "name": "ablate-sinks:mode=post,layers=2+3+4",
            "kind": "ablate",
            "target": "sinks",
            "mode": "post",
            "layers": [2, 3, 4],
            "draw": 0,
        },
        {
            "name": "ablate-random[1]",
            "kind": "ablate",
            "target": "random",
            "mode": "pre",
            "layers": None,
            "draw": 1,
        },
    ]
    specs = parse_conditions(
        "baseline,var,var-to-text:p=0.3,var-all-heads,ablate-sinks:mode=post,layers=2-4,"
        "ablate-random:draws=2"
    )
    specs = [s for s in specs if s.name != "ablate-random[0]"]
    assert [json.loads(json.dumps(s.describe())) for s in specs] == written
    assert [registry.from_dict(d) for d in written] == specs
    kinds = [type(registry.from_dict(d)) for d in written]
    assert kinds[1:5] == [VarSpec, VarTextSpec, VarAblationSpec, KnockOutSpec]


def test_text_budget_is_its_own_kind_under_three_spellings():
    a, b, c = parse_conditions("var:to=text,var:target=text,p=0.3,var-to-text:rows=random")
    assert isinstance(a, VarTextSpec)
    assert a.name == "var:to=text"
    assert a.variant == Variant(to="text")
    assert a.var == VarConfig()
    assert isinstance(b, VarTextSpec)
    assert b.name == "var:p=0.3,to=text"
    assert c.variant == Variant(rows="random", to="text")
    assert c.name == "var:rows=random,to=text"
    with pytest.raises(ValueError, match="to or target, not both"):
        parse_conditions("var:to=text,target=text")


def test_labels_parse_back_under_the_run_settings():
    context = ParseContext(tau=15.0, rho=0.8)
    text = "var,var:preset=official,p=0.3,var-random-heads,ablate-random:draws=3,layers=1-2"
    for spec in registry.parse(text, context):
        assert registry.parse(spec.name, context) == [spec]
        assert registry.from_dict(spec.to_dict()) == spec
    # The paper preset takes the run's rho and tau, and a label omits them.
    (paper,) = registry.parse("var:preset=paper", context)
    assert (paper.name, paper.var.rho, paper.var.tau) == ("var", 0.8, 15.0)
    # A label names every preset but paper (the names of earlier runs), so under a run
    # whose own preset is official a bare "var" label reads as official: the manifest's
    # to_dict layout, not the label, is what restores a condition there.
    official = ParseContext(preset="official")
    (paper_in_official,) = registry.parse("var:preset=paper", official)
    assert paper_in_official.name == "var"
    assert registry.from_dict(paper_in_official.to_dict()) == paper_in_official
    assert registry.parse("var", official)[0].var == VarConfig.preset("official")


def test_errors_are_one_line_condition_errors():
    for bad, message in [
        ("ablate-random:draws=2[1]", "not both"),
        ("var[2]", r"unknown option\(s\) \['draw'\]"),
        ("baseline:x=1", "unknown option"),
        ("var:layers=a-b", "range like 2-4"),
        ("var:p=x", "must be numbers"),
        ("var:to=nowhere", "to is one of"),
        ("ablate-visual:mode=mid", "mode is pre or post"),
        ("", "No conditions given"),
    ]:
        with pytest.raises(ConditionError, match=message) as caught:
            registry.parse(bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConditionError, match="Unknown condition layout"):
        registry.from_dict({"name": "x", "kind": "mystery"})
    assert registry.spec_class({"name": "x", "kind": "mystery"}) is None


def test_every_kind_is_registered_once_with_its_heads():
    kinds = registry.kinds()
    assert set(kinds) == {"baseline", "var", "var-ablation", "var-to-text", "ablate"}
    for spelling in ("baseline", "var", "var:rows=all", "var:to=text", "ablate-nonsink"):
        (spec,) = registry.parse(spelling)
        assert registry.kind_of(spec.name) is type(spec)
    assert registry.kind_of("no-such-thing") is None

    class Clash(VarTextSpec):
        kind = "another-text"

    with pytest.raises(ValueError, match=r"aliases \['var-to-text'\] of 'another-text' are taken"):
        registry.register(Clash)
    assert "another-text" not in registry.kinds()


def test_summary_lines_come_from_the_kinds():
    entry = {"var": {"rows_changed_mean": 3.0, "mass_moved_mean": 0.25, "noop_items": 1}}
    summary = {"conditions": {"baseline": {"n": 2}, "var:to=text": entry, "ablate-sinks": {}}}
    assert registry.summary_lines(summary) == [
        "var:to=text: 3.0 rows changed and 0.250 attention mass moved per item; no-op on 1 items"
    ]


def test_cli_lists_every_registered_kind() -> None:
    """`vsink conditions` reads the registry, so a new kind needs no CLI edit to be listed."""
    from typer.testing import CliRunner

    from analysis.cli import app

    result = CliRunner().invoke(app, ["conditions"])
    assert result.exit_code == 0, result.output
    listed = [line.split(":", 1)[0] for line in result.output.splitlines() if line.strip()]
    assert listed == list(registry.kinds())


def test_every_kind_module_of_the_package_is_registered_without_a_list() -> None:
    """The registry imports every module of analysis/interventions/ but base and registry,
    so adding a kind is one new file; each such module registers at least one kind."""
    import pkgutil

    import analysis.interventions as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"base", "registry"}
    assert {m.__name__.rsplit(".", 1)[1] for m in registry.BUILTIN} == modules
    homes = {spec.__module__.rsplit(".", 1)[1] for spec in registry.kinds().values()}
    assert homes == modules
