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
# # 03 Ablations: knocking out the visual sinks
#
# If the visual sinks carried image information, blocking attention to them
# would change the answer. The paper finds the opposite (section 4): blocking
# text-to-sink attention barely moves the output, while blocking the same
# number of other visual tokens does. The reason: sinks draw attention but
# write little into the residual stream (||alpha x W_OV|| is small, figure 3c).
#
# Runs on the bundled **synthetic** demo model unless `VSINK_MODEL` is set.
#
# `VSINK_DEVICE` and `VSINK_DTYPE` (e.g. `cuda`, `bfloat16`) choose where and in
# which precision the model loads; every setting: `analysis.notebook`.

# %%
from analysis import plots
from analysis.ablation import KnockOut, ablate
from analysis.capture import attention_maps
from analysis.contribution import residual_contribution
from analysis.dims import sink_dims
from analysis.loading import load_model
from analysis.notebook import setup
from analysis.tokens import build_batch, collect_images

SETTINGS = setup()
IMAGES = collect_images(SETTINGS.images)
PROMPT = "Is there a red object in the image?"
model = load_model(SETTINGS.model, device=SETTINGS.device, dtype=SETTINGS.dtype)
inputs = build_batch(model, [(path, PROMPT) for path in IMAGES[:4]])
dims = sink_dims(model, inputs)
print("sink dims:", dims)

# %% [markdown]
# ## Knock-out: sinks vs random visual tokens vs all non-sink visual tokens
# Pre-softmax masking (rows renormalise) of attention from the text tokens to
# the target keys, in every layer; `random` draws the same number of non-sink
# visual tokens per layer, five seeded draws.

# %%
result = ablate(
    model,
    inputs,
    targets=["sinks", "random", "nonsink"],
    answers=["yes", "no"],
    dims=dims,
    draws=5,
)
for name, row in result.summary().items():
    print(f"{name:10s} {row}")
plots.knockout_bars(result)

# %% [markdown]
# ## Attention with and without the sinks (paper figure 3d)

# %%
layer = min(2, model.n_layers - 1)
knock = KnockOut(model, inputs, target="sinks", dims=dims)
before = attention_maps(model, inputs, views=[(layer, None)], dims=dims)
after = attention_maps(model, inputs, views=[(layer, None)], dims=dims, fwd_hooks=knock.fwd_hooks())
plots.attention_comparison(before, after, IMAGES[0])

# %% [markdown]
# ## Residual contribution (paper figure 3c)
# Per key group: the contribution per (text query, key) pair, the attention
# per key and the value norm behind it.

# %%
contribution = residual_contribution(model, inputs, dims=dims)
print(contribution.summary())
plots.contribution_bars(contribution)
