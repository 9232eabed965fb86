"""Every registered condition kind keeps the intervention contract (tests/contracts)."""

from __future__ import annotations

from contracts.interventions import InterventionContract

from analysis.interventions import registry

# A tau no token reaches: no sinks anywhere, so sink-based edits select nothing.
NO_SINKS = {"tau": 1e6}


class TestBaseline(InterventionContract):
    label = "baseline"
    edits = False


class TestVar(InterventionContract):
    label = "var"
    identity_label = "var:p=0"


class TestVarOfficialPreset(InterventionContract):
    label = "var:preset=official"
    identity_label = "var:preset=official,p=1"  # the official p is the fraction kept


class TestVarAllHeads(InterventionContract):
    label = "var:rows=all"
    identity_label = "var:rows=all,p=0"


class TestVarToVisual(InterventionContract):
    label = "var:to=visual"
    identity_label = "var:to=visual,p=0"


class TestVarToText(InterventionContract):
    label = "var:to=text"
    identity_label = "var:target=text,p=0"


class TestKnockOutSinks(InterventionContract):
    label = "ablate-sinks"
    identity_context = NO_SINKS


class TestKnockOutNonSinkPost(InterventionContract):
    # (Zeroing the sinks' attention post-softmax moves the demo's logits by ~4e-5 only: its
    # sinks carry almost no value, so the post-mode edit is checked on the non-sink tokens.)
    label = "ablate-nonsink:mode=post"
    identity_label = "ablate-sinks:mode=post"
    identity_context = NO_SINKS


class TestKnockOutRandom(InterventionContract):
    label = "ablate-random[1]"
    identity_context = NO_SINKS  # as many random tokens as sinks: none


class TestKnockOutVisual(InterventionContract):
    label = "ablate-visual:mode=post,layers=2-4"
    identity_label = "ablate-sinks:mode=post,layers=2-4"
    identity_context = NO_SINKS


def test_every_registered_kind_has_a_contract_class():
    tested = {
        type(registry.parse(cls.label)[0]).kind
        for cls in InterventionContract.__subclasses__()
        if cls.__module__ == __name__
    }
    assert tested == set(registry.kinds())
