"""Every default of the toolkit, once.

The paper's constants (``../shared/PAPER_NOTES.md``) and the toolkit's own
defaults live here and nowhere else: functions, CLI options and config
dataclasses read them from this module instead of repeating the literal.
The config dataclasses (settings objects that validate themselves and
round-trip through ``to_dict`` / ``from_dict``) build on these values.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- the paper's method

#: phi threshold of a sink token (phi >= tau), section "sink tokens".
TAU = 20.0
#: share of the image attention a row must give to non-sink visual tokens (r >= rho).
RHO = 0.5
#: minimum image attention s of an image-centric row.
MIN_IMAGE_ATTENTION = 0.2
#: fraction of the visual sink attention VAR moves (the paper's convention).
P = 0.6
#: a dim is a sink dim when at most this fraction of the text tokens reaches tau on it.
MAX_TEXT_FRACTION = 0.5

# --------------------------------------------------------------------------- statistics

#: bootstrap resamples for confidence intervals (every CI in results, tables and plots).
N_BOOT = 1000
#: confidence level of every interval.
CI_LEVEL = 0.95
#: seed of every random draw (bootstrap, random controls) unless one is given.
SEED = 0

# --------------------------------------------------------------------------- running

#: tokens generated per answer.
MAX_NEW_TOKENS = 16
#: samples per forward pass.
BATCH_SIZE = 1
#: items a notebook runs over on a real dataset unless VSINK_LIMIT says otherwise.
NOTEBOOK_LIMIT = 16
