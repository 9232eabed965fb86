# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
# ---

# %% [markdown]
# # 01 Massive activations and sink dimensions
#
# A few hidden dimensions carry huge values on BOS and on a handful of visual
# tokens from the early layers on (paper section 2). This notebook finds those
# *sink dimensions* automatically over a calibration set, checks them against
# the registry, and shows the hidden state of BOS, a visual sink and an
# ordinary visual token (paper figure 2).
#
# It runs on the bundled **synthetic** demo model (constructed weights with a
# planted sink); set `VSINK_MODEL` to an HF id or a local folder to run it on a
# real checkpoint, and `VSINK_IMAGES` to a folder of your images.
#
# `VSINK_DEVICE` and `VSINK_DTYPE` (e.g. `cuda`, `bfloat16`) choose where and in
# which precision the model loads; every setting: `analysis.notebook`.

# %%
from analysis import plots
from analysis.capture import token_states
from analysis.dims import discover_dims, registry_entry
from analysis.loading import load_model
from analysis.notebook import setup
from analysis.tokens import build_inputs, collect_images

SETTINGS = setup()
IMAGES = collect_images(SETTINGS.images)
model = load_model(SETTINGS.model, device=SETTINGS.device, dtype=SETTINGS.dtype)
print(model.describe())

# %% [markdown]
# ## Discover the dimensions
# Per layer and dimension, the peak |x_d| / RMS(x) over tokens; a dimension is
# massive when it is extreme on few tokens in most layers (see
# `analysis.dims.DimThresholds`).

# %%
calibration = [build_inputs(model, path, "Describe the image.") for path in IMAGES[:8]]
found = discover_dims(model, calibration, show_progress=False)
print("discovered sink dims:", found.dims)
print("registry entry:", registry_entry(model))
for row in found.per_dim()[:4]:
    print(row)

# %% [markdown]
# ## Hidden state per dimension (paper figure 2)
# BOS and a visual sink carry massive values in the sink dims; the non-sink
# visual token does not.

# %%
states = token_states(model, calibration[0], layer=min(2, model.n_layers - 1), dims=found.dims)
plots.hidden_state_magnitudes(states)
