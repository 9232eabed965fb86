"""The sink score phi and the sink test, pure functions on the residual stream.

For the hidden state x entering layer l,

    phi(x) = max over d in D_sink of |x_d / RMS(x)|,   RMS(x) = sqrt(mean(x^2) + eps)

(no learned norm weight, eps 1e-6, float32); a token is a sink when phi >= tau.
Both :mod:`analysis.capture` and :mod:`analysis.sinks` (and every intervention)
import them from here, so neither module needs the other for the maths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import reduce
from jaxtyping import Bool, Float

RMS_EPS = 1e-6


def phi(
    resid: Float[torch.Tensor, "*batch d_model"], dims: Sequence[int], eps: float = RMS_EPS
) -> Float[torch.Tensor, "*batch"]:
    """The paper's sink score, computed in float32 whatever the input dtype."""
    x = resid.float()
    rms = torch.sqrt(reduce(x.square(), "... d_model -> ...", "mean") + eps)
    index = torch.as_tensor(list(dims), device=x.device, dtype=torch.long)
    return (x.index_select(-1, index).abs() / rms[..., None]).amax(-1)


def sink_mask(
    phi_values: Float[torch.Tensor, "*batch"], tau: float, *, strict: bool = False
) -> Bool[torch.Tensor, "*batch"]:
    """Sink tokens: ``phi >= tau`` (the paper), or ``phi > tau`` with ``strict`` (its code)."""
    return phi_values > tau if strict else phi_values >= tau
