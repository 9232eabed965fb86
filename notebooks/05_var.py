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
# # 05 VAR: visual attention redistribution
#
# In image-centric (layer, head, query) rows, VAR takes a fraction p of the
# attention on sink tokens and gives it to the non-sink visual tokens in
# proportion to their attention (paper section 6). It is a hook on the
# post-softmax pattern: no training, no extra forward pass, and it works during
# generation with a KV cache.
#
# Runs on the bundled **synthetic** demo model unless `VSINK_MODEL` is set.
#
# `VSINK_DEVICE` and `VSINK_DTYPE` (e.g. `cuda`, `bfloat16`) choose where and in
# which precision the model loads; every setting: `analysis.notebook`.

# %%
from analysis import plots
from analysis.config import RHO, P
from analysis.dims import sink_dims
from analysis.generation import answer_logprobs, describe_generation, generate
from analysis.heads import score_heads
from analysis.loading import load_model
from analysis.notebook import setup
from analysis.tokens import build_batch, collect_images
from analysis.var import VarConfig, VarIntervention, run_with_var, var_attention

SETTINGS = setup()
IMAGES = collect_images(SETTINGS.images)
PROMPT = "Is there a red object in the image?"
model = load_model(SETTINGS.model, device=SETTINGS.device, dtype=SETTINGS.dtype)
inputs = build_batch(model, [(path, PROMPT) for path in IMAGES[:4]])
dims = sink_dims(model, inputs)
config = VarConfig(p=P, rho=RHO)

# %% [markdown]
# ## One forward pass with VAR: what changed, per layer

# %%
logits, record = run_with_var(model, inputs, dims=dims, config=config)
print(record.summary())

# %% [markdown]
# ## Answer log-probabilities with and without VAR

# %%
base, _ = answer_logprobs(model, inputs, ["yes", "no"])
var = VarIntervention(model, inputs, dims=dims, config=config)
with_var, _ = answer_logprobs(model, inputs, ["yes", "no"], fwd_hooks=var.fwd_hooks())
print("log p(yes) - log p(no), baseline:", (base[:, 0] - base[:, 1]).tolist())
print("log p(yes) - log p(no), VAR:     ", (with_var[:, 0] - with_var[:, 1]).tolist())

# %% [markdown]
# ## Generation with a KV cache: VAR applies at every decoding step

# %%
baseline = generate(model, inputs, max_new_tokens=8)
var = VarIntervention(model, inputs, dims=dims, config=config)
redistributed = generate(model, inputs, max_new_tokens=8, fwd_hooks=var.fwd_hooks())
print("baseline:", describe_generation(model, baseline))
print("VAR:     ", describe_generation(model, redistributed))
print(var.record().summary())

# %% [markdown]
# ## The most image-centric head before and after VAR (paper figure 5)
# On the demo model that is one of the planted heads, (2, 1) or (3, 2).

# %%
top = score_heads(model, inputs, dims=dims, show_progress=False).ranked(top=1)[0]
head = (top["layer"], top["head"])
print("most image-centric head:", head)
result = var_attention(model, inputs.select(0), views=[head], dims=dims, config=config)
plots.var_before_after(result, IMAGES[0])
