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
# # 02 Sink tokens
#
# A token is a sink at layer l when phi = max over sink dims of |x_d / RMS(x)|
# at the layer input is at least tau (20 in the paper). Visual sinks are sink
# tokens among the image tokens; they draw attention from every text token
# (paper figure 1) while sitting on the background. On the synthetic demo
# model the planted sink patches are known, so the classifier can be scored.
#
# `VSINK_DEVICE` and `VSINK_DTYPE` (e.g. `cuda`, `bfloat16`) choose where and in
# which precision the model loads; every setting: `analysis.notebook`.

# %%
import json

import torch

from analysis import plots
from analysis.capture import attention_maps, attention_received
from analysis.config import TAU
from analysis.dims import sink_dims
from analysis.loading import DEMO_MODEL_DIR, load_model
from analysis.notebook import setup
from analysis.sinks import find_sinks, tau_sweep, validate_sinks
from analysis.tokens import build_inputs, collect_images

SETTINGS = setup()
IMAGES = collect_images(SETTINGS.images)
PROMPT = "Is there a red object in the image?"
model = load_model(SETTINGS.model, device=SETTINGS.device, dtype=SETTINGS.dtype)
inputs = build_inputs(model, IMAGES[0], PROMPT)
dims = sink_dims(model, [build_inputs(model, p, PROMPT) for p in IMAGES[:4]])
print("sink dims:", dims)

# %% [markdown]
# ## phi at every layer input

# %%
sinks = find_sinks(model, inputs, dims=dims, tau=TAU)
print("visual sinks per layer:", sinks.counts()["visual"][0].tolist())
print("text sinks per layer:  ", sinks.counts()["text"][0].tolist())
print("layers with visual sinks:", sinks.sink_layers())
plots.phi_overlay(sinks, IMAGES[0])

# %%
plots.sink_counts(sinks)

# %% [markdown]
# ## Against the planted truth (demo model only)

# %%
truth_file = DEMO_MODEL_DIR.parent / "ground_truth.json"
if truth_file.is_file() and SETTINGS.is_demo:
    truth = json.loads(truth_file.read_text())
    planted = {tuple(c) for c in truth["images"][IMAGES[0].name]["sink_patches"]}
    geometry = inputs.layouts[0].geometry
    mask = torch.tensor(
        [(int(r), int(c)) in planted for r, c in zip(geometry.row, geometry.col, strict=True)]
    )
    print("precision / recall / F1 per layer:")
    for layer_scores in validate_sinks(sinks, [mask])[0]:
        print(layer_scores)
    print("threshold sweep (mean over sink layers):")
    for row in tau_sweep(sinks, [mask], [5, 10, 20, 40, 80]):
        print(row)

# %% [markdown]
# ## Text tokens attend to the same few patches (paper figure 1)
# Attention of four text tokens after the image, averaged over the heads of a
# sink layer, over the image grid; visual sinks are marked.

# %%
layer = sinks.sink_layers()[0] if sinks.sink_layers() else model.n_layers // 2
maps = attention_maps(
    model, inputs, views=[(layer, None)], queries=[-4, -3, -2, -1], dims=dims, tau=TAU
)
plots.text_attention_overlay(maps, IMAGES[0])

# %% [markdown]
# ## High phi, high attention (paper figure 3a)

# %%
received = attention_received(model, inputs, dims=dims, tau=TAU)
plots.phi_vs_attention(received)
