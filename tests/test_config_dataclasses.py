"""The settings dataclasses of analysis.config: defaults from the constants, checks, round trips."""

from __future__ import annotations

import json

import pytest

from analysis import config
from analysis.checks import ConfigError
from analysis.config import HeadSelection, SinkConfig, VarConfig


@pytest.mark.parametrize(
    "value",
    [
        SinkConfig(),
        SinkConfig(tau=12.5, strict=True, dims_source="registry"),
        SinkConfig(dims_source="explicit", dims=(337, 771)),
        HeadSelection(),
        HeadSelection.preset("vision-centric", layers=(2, 3), min_fraction=0.25),
        VarConfig(),
        VarConfig.preset("official", layers=(2, 4)),
        VarConfig(p=0.3, rho=0.8, min_image_attention=0.1, tau=15.0, last_layer=True),
    ],
)
def test_round_trip_through_dict_and_json(value):
    data = value.to_dict()
    assert type(value).from_dict(data) == value
    assert type(value).from_dict(json.loads(json.dumps(data))) == value  # tuples come back


def test_defaults_are_the_constants():
    assert (SinkConfig().tau, SinkConfig().strict) == (config.TAU, False)
    selection = HeadSelection()
    assert (selection.rho, selection.min_image_attention) == (
        config.RHO,
        config.MIN_IMAGE_ATTENTION,
    )
    assert selection.min_fraction == config.MIN_SELECTED_FRACTION
    var = VarConfig()
    assert (var.p, var.rho, var.min_image_attention, var.tau) == (
        config.P,
        config.RHO,
        config.MIN_IMAGE_ATTENTION,
        config.TAU,
    )
    assert HeadSelection.preset("general").rho == config.RHO_PRESETS["general"] == 0.8
    assert VarConfig.preset("official").sinks() == SinkConfig(strict=True, dims_source="registry")


def test_var_config_is_still_importable_from_var():
    from analysis.var import PRESETS
    from analysis.var import VarConfig as Old

    assert Old is VarConfig
    assert PRESETS is config.VAR_PRESETS


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SinkConfig(tau=float("nan")), "tau must be"),
        (lambda: SinkConfig(tau=-1.0), "tau must be"),
        (lambda: SinkConfig(strict=1), "strict must be true or false"),
        (lambda: SinkConfig(dims_source="guess"), "dims_source must be one of"),
        (lambda: SinkConfig(dims=(3,)), "exactly when dims_source is 'explicit'"),
        (lambda: SinkConfig(dims_source="explicit"), "exactly when dims_source is 'explicit'"),
        (lambda: SinkConfig(dims_source="explicit", dims=(-1,)), "dims entry must be"),
        (lambda: HeadSelection(rho=1.5), "rho must be"),
        (lambda: HeadSelection(min_image_attention=-0.1), "min_image_attention must be"),
        (lambda: HeadSelection(layers=()), "at least one layer"),
        (lambda: HeadSelection(min_fraction=2.0), "min_fraction must be in"),
        (lambda: HeadSelection.preset("everything"), "rho preset must be one of"),
        (lambda: VarConfig(p=2.0), "p must be"),
        (lambda: VarConfig(convention="mine"), "convention must be one of"),
        (lambda: VarConfig(last_layer="yes"), "last_layer must be true or false"),
        (lambda: VarConfig.from_dict({"p": 0.5, "q": 1}), r"unknown setting\(s\) \['q'\]"),
        (lambda: SinkConfig.from_dict([1, 2]), "needs a mapping"),
    ],
)
def test_bad_settings_are_refused_in_one_line(build, message):
    with pytest.raises(ConfigError, match=message) as caught:
        build()
    assert "\n" not in str(caught.value)
