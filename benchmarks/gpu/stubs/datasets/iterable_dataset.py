"""Stub (see the package docstring)."""


class IterableDataset:
    """Placeholder type: TransformerLens only names it in annotations at import."""
