"""Stub (see the package docstring)."""

from datasets import load_dataset

__all__ = ["load_dataset"]
