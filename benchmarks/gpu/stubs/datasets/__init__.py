"""Import-time stand-in for Hugging Face ``datasets`` on the GPU benchmark machine only.

TransformerLens 4.3 imports ``datasets`` (and through it pyarrow, ~55 MB) when its
bridge is imported, for dataset helpers the benchmark never calls. The GPU machine
has no registry and what travels there is capped, so ``benchmarks/gpu/run.sh`` puts
this folder on ``sys.path`` only when the real package is missing. Calling anything
here raises.
"""


def load_dataset(*args, **kwargs):
    raise RuntimeError("datasets is a stub on this machine (benchmarks/gpu/stubs).")
