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
# # 04 Image-centric heads
#
# For layer l, head h and text query i: image attention s (the attention on
# visual tokens) and the visual non-sink ratio r (the share of s that goes to
# non-sink visual tokens). (l, h, i) is image-centric when s >= 0.2 and
# r >= rho (paper section 5; rho presets: 0.8 general, 0.5 hallucination,
# 0.9 vision-centric). Layers whose input holds no visual sink select no head.
#
# Runs on the bundled **synthetic** demo model unless `VSINK_MODEL` is set; its
# planted image-centric heads are (2, 1) and (3, 2).
#
# `VSINK_DEVICE` and `VSINK_DTYPE` (e.g. `cuda`, `bfloat16`) choose where and in
# which precision the model loads; every setting: `analysis.notebook`.

# %%
from analysis import plots
from analysis.capture import attention_maps
from analysis.dims import sink_dims
from analysis.figures import contrast_heads
from analysis.heads import score_heads
from analysis.loading import load_model
from analysis.notebook import setup
from analysis.tokens import build_inputs, collect_images

SETTINGS = setup()
IMAGES = collect_images(SETTINGS.images)
PROMPT = "Is there a red object in the image?"
model = load_model(SETTINGS.model, device=SETTINGS.device, dtype=SETTINGS.dtype)
inputs = [build_inputs(model, path, PROMPT) for path in IMAGES]
dims = sink_dims(model, inputs[:4])

# %%
scores = score_heads(model, inputs, dims=dims, preset="hallucination", show_progress=False)
print("image-centric heads:", scores.image_centric_heads())
for row in scores.ranked(top=5):
    print(row)

# %% [markdown]
# ## Layer x head maps

# %%
plots.head_maps(scores)

# %% [markdown]
# ## High vs low visual non-sink ratio, on the image (paper figure 4)

# %%
high, low = contrast_heads(scores)
print("high r:", high, "low r:", low)
maps = attention_maps(model, inputs[0], views=high + low, dims=dims)
plots.head_contrast(maps, scores, IMAGES[0])
