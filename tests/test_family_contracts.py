"""Every registered family passes the family contract (``tests/contracts/families.py``).

Adding a family: its module in ``analysis/families/`` and one class here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from contracts.families import FamilyContract

from analysis.families import families


class TestLlava(FamilyContract):
    family = "llava"
    bad_values = (
        ("vision_feature_select_strategy", "cls", "vision_feature_select_strategy='cls'"),
    )


class TestLlavaNext(FamilyContract):
    family = "llava_next"
    bad_values = (
        ("vision_feature_select_strategy", "full", "vision_feature_select_strategy='full'"),
        ("image_grid_pinpoints", [], "no image_grid_pinpoints"),
        ("image_grid_pinpoints", [[28, 50]], r"entry \[28, 50\]"),
    )


class TestGemma3(FamilyContract):
    family = "gemma3"
    bad_values = (("mm_tokens_per_image", 5, "mm_tokens_per_image=5 is not a square"),)


def test_every_registered_family_has_a_contract_class() -> None:
    # A family may keep its class in its own tests/test_family_<name>.py.
    for path in sorted(Path(__file__).parent.glob("test_family_*.py")):
        importlib.import_module(path.stem)
    tested = {cls.family for cls in FamilyContract.__subclasses__()}
    assert tested == set(families()), "add a FamilyContract class for each new family"
