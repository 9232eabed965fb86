"""Measure the planted circuit of the SYNTHETIC demo model (used to tune ``build.py``).

Everything here is measured from hidden states and attention patterns of real
forward passes; ``ground_truth.json`` only supplies what the planted answer
should be. ``python -m analysis.demo.verify [DIR]`` prints the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.config import P

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_DIR = Path(__file__).resolve().parent

AttnEdit = Callable[[int, torch.Tensor], torch.Tensor]


def load(out_dir: Path | str = DEFAULT_DIR):
    """Model (float32, eager), processor, ground truth and questions from a build folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out_dir = Path(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(
        out_dir / "model", attn_implementation="eager", dtype=torch.float32
    ).eval()
    processor = AutoProcessor.from_pretrained(out_dir / "model")
    gt = json.loads((out_dir / "ground_truth.json").read_text())
    questions = [
        json.loads(line) for line in (out_dir / "questions.jsonl").read_text().splitlines()
    ]
    return model, processor, gt, questions


def prepare(processor, image, text: str) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=prompt, return_tensors="pt")


@contextlib.contextmanager
def attention_edit(pre: AttnEdit | None = None, post: AttnEdit | None = None) -> Iterator[None]:
    """Temporarily replace the Llama eager attention with one that lets ``pre`` edit the
    scores (before softmax, mask included) and ``post`` the probabilities (before V).
    Both get (layer_idx, tensor [batch, heads, query, key]) and return the new tensor."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.eager_attention_forward

    def patched(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        value = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        if pre is not None:
            scores = pre(module.layer_idx, scores)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        if post is not None:
            probs = post(module.layer_idx, probs)
        out = torch.matmul(probs, value).transpose(1, 2).contiguous()
        return out, probs

    modeling_llama.eager_attention_forward = patched
    try:
        yield
    finally:
        modeling_llama.eager_attention_forward = original


def phi(hidden: torch.Tensor, sink_dims: list[int]) -> torch.Tensor:
    x = hidden.float()
    rms = torch.sqrt((x**2).mean(-1) + 1e-6)
    return (x[..., sink_dims].abs() / rms[..., None]).amax(-1)


def knockout_pre(queries: torch.Tensor, keys: torch.Tensor) -> AttnEdit:
    """Block attention from ``queries`` to ``keys`` (all layers, all heads)."""

    def edit(layer: int, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        q = queries[queries < scores.shape[-2]]
        block = scores[:, :, q]
        block[..., keys] = torch.finfo(scores.dtype).min
        scores[:, :, q] = block
        return scores

    return edit


def var_post(
    heads: list[tuple[int, int]],
    queries: torch.Tensor,
    sinks: torch.Tensor,
    visual_nonsink: torch.Tensor,
    p: float = P,
) -> AttnEdit:
    """VAR (paper section 6): in ``heads`` move the fraction ``p`` of the sink attention
    of each query in ``queries`` to the visual non-sink tokens, in proportion."""

    def edit(layer: int, probs: torch.Tensor) -> torch.Tensor:
        chosen = [h for (lay, h) in heads if lay == layer]
        if not chosen:
            return probs
        probs = probs.clone()
        for h in chosen:
            rows = probs[0, h, queries]
            budget = p * rows[:, sinks].sum(-1, keepdim=True)
            nonsink = rows[:, visual_nonsink]
            rows[:, sinks] *= 1 - p
            rows[:, visual_nonsink] = nonsink + budget * nonsink / nonsink.sum(-1, keepdim=True)
            probs[0, h, queries] = rows
        return probs

    return edit


def answer_logprobs(logits: torch.Tensor, processor) -> tuple[float, float, str]:
    logp = torch.log_softmax(logits.float(), -1)
    tok = processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    top = tok.convert_ids_to_tokens(int(logits.argmax()))
    return float(logp[yes]), float(logp[no]), top


def analyse(model, processor, gt: dict[str, Any], questions: list[dict[str, Any]], image_dir: Path):
    from PIL import Image

    sink_dims = gt["sink_dims"]
    tau = gt["tau"]
    first = gt["first_sink_layer"]
    n_layers = model.config.text_config.num_hidden_layers
    n_heads = model.config.text_config.num_attention_heads
    image_token = model.config.image_token_index
    ic_heads = [tuple(h) for h in gt["image_centric_heads"]]
    rng = np.random.default_rng(0)

    res: dict[str, Any] = {
        "phi_planted_min": math.inf,
        "phi_bos_min": math.inf,
        "phi_other_max": 0.0,
        "ratio_median_min": math.inf,
        "sink_sets_exact": True,
        "sink_fraction": np.zeros((n_layers, n_heads)),
        "ic_object_share": {h: [] for h in ic_heads},
        "ic_image_attention": {h: [] for h in ic_heads},
        "ic_sink_total": {h: [] for h in ic_heads},
        "items": [],
    }
    n_items = 0
    for item in questions:
        info = gt["images"][item["image"]]
        image = Image.open(image_dir / item["image"]).convert("RGB")
        inputs = prepare(processor, image, item["text"])
        ids = inputs["input_ids"][0]
        vis = (ids == image_token).nonzero()[:, 0]
        grid = torch.tensor(info["patch_grid"]).flatten()
        planted = vis[grid == 2]
        objects = vis[grid == 1]
        background = vis[grid == 0]
        text_q = torch.arange(int(vis[-1]) + 1, len(ids))
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
        hs = out.hidden_states
        for layer in range(first, n_layers):
            ph = phi(hs[layer][0], sink_dims)
            x = hs[layer][0].float()
            med = x.abs().median(-1).values
            big = x[:, sink_dims].abs().amax(-1) / med
            measured = set((ph >= tau).nonzero()[:, 0].tolist())
            if measured != {0, *planted.tolist()}:
                res["sink_sets_exact"] = False
            res["phi_planted_min"] = min(res["phi_planted_min"], float(ph[planted].min()))
            res["phi_bos_min"] = min(res["phi_bos_min"], float(ph[0]))
            mask = torch.ones(len(ids), dtype=torch.bool)
            mask[planted] = False
            mask[0] = False
            res["phi_other_max"] = max(res["phi_other_max"], float(ph[mask].max()))
            res["ratio_median_min"] = min(
                res["ratio_median_min"], float(big[planted].min()), float(big[0])
            )
        sinks = torch.cat([torch.tensor([0]), planted])
        for layer in range(first, n_layers):
            att = out.attentions[layer][0][:, text_q]  # heads, queries, keys
            res["sink_fraction"][layer] += att[:, :, sinks].sum(-1).mean(-1).numpy()
            for lay, h in ic_heads:
                if lay != layer:
                    continue
                a = att[h]
                img = a[:, vis].sum(-1)
                res["ic_image_attention"][(lay, h)].append(float(img.mean()))
                res["ic_object_share"][(lay, h)].append(float((a[:, objects].sum(-1) / img).mean()))
                res["ic_sink_total"][(lay, h)].append(float(a[:, sinks].sum(-1).mean()))
        n_items += 1

        base = answer_logprobs(out.logits[0, -1], processor)
        kill_obj = knockout_pre(text_q, objects)
        with attention_edit(pre=kill_obj), torch.no_grad():
            ko_obj = answer_logprobs(model(**inputs).logits[0, -1], processor)
        n = len(planted)
        with attention_edit(pre=knockout_pre(text_q, planted)), torch.no_grad():
            ko_sink = answer_logprobs(model(**inputs).logits[0, -1], processor)
        with attention_edit(pre=knockout_pre(text_q, sinks[:n])), torch.no_grad():
            ko_sink_bos = answer_logprobs(model(**inputs).logits[0, -1], processor)
        rand = vis[torch.from_numpy(rng.choice(len(vis), size=n, replace=False))]
        with attention_edit(pre=knockout_pre(text_q, rand)), torch.no_grad():
            ko_rand = answer_logprobs(model(**inputs).logits[0, -1], processor)
        nonsink = torch.cat([objects, background]).sort().values
        with attention_edit(post=var_post(ic_heads, text_q, sinks, nonsink)), torch.no_grad():
            var = answer_logprobs(model(**inputs).logits[0, -1], processor)
        res["items"].append(
            {
                "qid": item["question_id"],
                "label": item["label"],
                "base": base,
                "ko_objects": ko_obj,
                "ko_sinks": ko_sink,
                "ko_sinks_with_bos": ko_sink_bos,
                "ko_random": ko_rand,
                "var": var,
            }
        )
    res["sink_fraction"] /= max(n_items, 1)
    return res


def _acc(items, key: str) -> float:
    return float(np.mean([it[key][2] == it["label"] for it in items]))


def _lp(it, key: str) -> float:
    yes, no, _ = it[key]
    return yes if it["label"] == "yes" else no


def summarise(res: dict[str, Any]) -> str:
    items = res["items"]
    lines = [
        f"phi: BOS min {res['phi_bos_min']:.2f}, planted min {res['phi_planted_min']:.2f}, "
        f"others max {res['phi_other_max']:.3f}; sink-dim / median|x| min "
        f"{res['ratio_median_min']:.0f}; measured sink sets == planted: {res['sink_sets_exact']}",
        "sink fraction of text queries after the image (layer x head):",
    ]
    for layer, row in enumerate(res["sink_fraction"]):
        lines.append(f"  L{layer}: " + " ".join(f"{v:.2f}" for v in row))
    for h, shares in res["ic_object_share"].items():
        lines.append(
            f"IC head {h}: object share of image attention mean {np.mean(shares):.2f} "
            f"min {np.min(shares):.2f}; image attention mean "
            f"{np.mean(res['ic_image_attention'][h]):.2f}; sink total (BOS incl.) mean "
            f"{np.mean(res['ic_sink_total'][h]):.2f} range "
            f"[{np.min(res['ic_sink_total'][h]):.2f}, {np.max(res['ic_sink_total'][h]):.2f}]"
        )
    for key in ("base", "ko_objects", "ko_sinks", "ko_sinks_with_bos", "ko_random", "var"):
        d = [_lp(it, key) - _lp(it, "base") for it in items]
        lines.append(
            f"{key:18s} acc {_acc(items, key):.3f}  mean logp(label) "
            f"{np.mean([_lp(it, key) for it in items]):+.3f}  delta vs base mean {np.mean(d):+.3f} "
            f"max|d| {np.max(np.abs(d)):.3f}"
        )
    pos = [it for it in items if it["label"] == "yes"]
    flips = np.mean([it["ko_objects"][2] != "yes" for it in pos])
    var_up = np.mean([it["var"][0] > it["base"][0] for it in pos])
    var_d = np.mean([it["var"][0] - it["base"][0] for it in pos])
    lines.append(f"positives flipped by object knockout: {flips:.3f}")
    var_m = [(it["var"][0] - it["var"][1]) - (it["base"][0] - it["base"][1]) for it in pos]
    lines.append(
        f"VAR raises log p(yes) on positives: {var_up:.3f} (mean {var_d:+.4f}); "
        f"log p(yes) - log p(no) change: mean {np.mean(var_m):+.3f} min {np.min(var_m):+.3f}"
    )
    return "\n".join(lines)


def print_report(out_dir: Path | str = DEFAULT_DIR) -> dict[str, Any]:
    out_dir = Path(out_dir)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    model, processor, gt, questions = load(out_dir)
    res = analyse(model, processor, gt, questions, out_dir / "images")
    print(summarise(res))
    return res


if __name__ == "__main__":
    print_report(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR)
