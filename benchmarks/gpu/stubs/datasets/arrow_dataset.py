"""Stub (see the package docstring)."""


class Dataset:
    """Placeholder type: TransformerLens only names it in annotations at import."""
