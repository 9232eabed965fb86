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
# # 06 Running on a real checkpoint
#
# Written for `llava-hf/llava-1.5-7b-hf` on a GPU:
#
# ```bash
# VSINK_MODEL=llava-hf/llava-1.5-7b-hf VSINK_DEVICE=cuda VSINK_DTYPE=bfloat16 \
# VSINK_QUESTIONS=pope/coco_pope_random.jsonl VSINK_IMAGES=coco/val2014 \
#     jupyter nbconvert --to notebook --execute notebooks/06_real_checkpoint.ipynb
# ```
#
# With no environment variables it runs on the bundled **synthetic** demo model
# and its 32 yes/no questions, so that it executes anywhere (and in the tests).
# On LLaVA-1.5-7B expect the registry's sink dims [1415, 2533] (LLaMA-2-7B),
# tens of visual sinks per image from layer 2 on, and VAR changing a small
# share of the rows. Every `VSINK_*` setting is read by `analysis.notebook.setup()`.

# %%
import tempfile

from analysis.config import MAX_NEW_TOKENS, RHO, P
from analysis.datasets import read_pope
from analysis.dims import discover_dims, registry_entry, sink_dims
from analysis.evaluation import evaluate, summary_rows
from analysis.generation import describe_generation, generate
from analysis.heads import score_heads
from analysis.loading import load_model
from analysis.notebook import setup
from analysis.sinks import find_sinks
from analysis.tokens import build_inputs, describe_layout
from analysis.var import VarConfig, VarIntervention

SETTINGS = setup()
print(SETTINGS.describe())
model = load_model(SETTINGS.model, device=SETTINGS.device, dtype=SETTINGS.dtype)
print(model.describe())

# %% [markdown]
# ## Token layout of one item

# %%
items = read_pope(SETTINGS.questions, SETTINGS.images, limit=SETTINGS.limit)
inputs = build_inputs(model, items[0].image, items[0].text)
print(describe_layout(inputs.layouts[0]))

# %% [markdown]
# ## Sink dimensions: registry vs discovery

# %%
calibration = [build_inputs(model, item.image, item.text) for item in items[:8]]
print("registry:", registry_entry(model))
print("discovered:", discover_dims(model, calibration, show_progress=False).dims)
dims = sink_dims(model, calibration)
print("using:", dims)

# %% [markdown]
# ## Sinks and image-centric heads on one item

# %%
sinks = find_sinks(model, inputs, dims=dims)
print("visual sinks per layer:", sinks.counts()["visual"][0].tolist())
scores = score_heads(model, calibration, dims=dims, preset="hallucination", show_progress=False)
print("image-centric heads:", scores.image_centric_heads()[:10])

# %% [markdown]
# ## Generation with and without VAR

# %%
config = VarConfig(p=P, rho=RHO)
baseline = generate(model, inputs, max_new_tokens=MAX_NEW_TOKENS)
var = VarIntervention(model, inputs, dims=dims, config=config)
redistributed = generate(model, inputs, max_new_tokens=MAX_NEW_TOKENS, fwd_hooks=var.fwd_hooks())
print("baseline:", describe_generation(model, baseline))
print("VAR:     ", describe_generation(model, redistributed))

# %% [markdown]
# ## A small POPE run: baseline, VAR, sink and random knock-outs
# The run directory holds the per-item records and the manifest; rerunning
# the same call resumes. Use `vsink eval` (and `torchrun`) for full runs.

# %%
run_dir = SETTINGS.run_dir or tempfile.mkdtemp(prefix="vsink-run-")
result = evaluate(
    model,
    items,
    out=run_dir,
    conditions="baseline,var,ablate-sinks,ablate-random",
    dims=dims,
    max_new_tokens=4,
    show_progress=False,
)
for row in summary_rows(result.summary()):
    print(row)
