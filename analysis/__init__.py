"""Visual attention sinks in large multimodal models, on TransformerLens.

The public API, importable from ``analysis`` directly (``from analysis import
load_model, find_sinks``). Names resolve on first use, so ``import analysis``
(and the ``vsink`` command's start-up) does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # loading, families, inputs
    "load_model": "analysis.loading",
    "LoadedModel": "analysis.loading",
    "families": "analysis.families",
    "Family": "analysis.families",
    "build_inputs": "analysis.tokens",
    "build_batch": "analysis.tokens",
    "ModelInputs": "analysis.tokens",
    # settings
    "SinkConfig": "analysis.config",
    "HeadSelection": "analysis.config",
    "VarConfig": "analysis.config",
    "EvalConfig": "analysis.config",
    # analyses
    "attention_maps": "analysis.capture",
    "token_states": "analysis.capture",
    "attention_received": "analysis.capture",
    "discover_dims": "analysis.dims",
    "sink_dims": "analysis.dims",
    "find_sinks": "analysis.sinks",
    "score_heads": "analysis.heads",
    "rank_heads": "analysis.heads",
    "residual_contribution": "analysis.contribution",
    # interventions
    "interventions": "analysis.interventions",
    "KnockOut": "analysis.ablation",
    "ablate": "analysis.ablation",
    "VarIntervention": "analysis.var",
    "run_with_var": "analysis.var",
    "var_attention": "analysis.var",
    # generation and evaluation
    "generate": "analysis.generation",
    "reference_greedy": "analysis.generation",
    "evaluate": "analysis.evaluation",
    "summarize": "analysis.evaluation",
    # figures, report, notebooks, test models
    "make_figures": "analysis.figures",
    "make_report": "analysis.report",
    "setup": "analysis.notebook",
    "build_tiny_model": "analysis.tiny",
    "VsinkError": "analysis.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
