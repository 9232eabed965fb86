"""The SYNTHETIC demo model (analysis/demo) shows the planted visual attention sink.

Everything is measured from hidden states and attention patterns of real
forward passes of the shipped checkpoint; ground_truth.json only supplies the
expected answer (where the planted sinks and objects are, which heads).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "analysis" / "demo"
MODEL_DIR = DEMO / "model"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model.safetensors").exists(), reason="demo model not built"
)


def _phi(hidden: torch.Tensor, dims: list[int]) -> torch.Tensor:
    x = hidden.float()
    rms = torch.sqrt((x**2).mean(-1) + 1e-6)
    return (x[..., dims].abs() / rms[..., None]).amax(-1)


def _prepare(processor, image: Image.Image, text: str) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=prompt, return_tensors="pt")


class _Knockout:
    """Pre-softmax mask from ``queries`` to ``keys`` in every decoder layer, via
    forward pre-hooks on the attention modules that edit their 4D additive mask."""

    def __init__(self, model, queries: torch.Tensor, keys: torch.Tensor):
        self.model, self.queries, self.keys, self.handles = model, queries, keys, []

    def _hook(self, module, args, kwargs):
        mask = kwargs["attention_mask"].clone()
        mask[:, :, self.queries[:, None], self.keys[None, :]] = torch.finfo(mask.dtype).min
        kwargs["attention_mask"] = mask
        return args, kwargs

    def __enter__(self):
        for layer in self.model.model.language_model.layers:
            self.handles.append(
                layer.self_attn.register_forward_pre_hook(self._hook, with_kwargs=True)
            )
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(
        MODEL_DIR, attn_implementation="eager", dtype=torch.float32
    ).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    gt = json.loads((DEMO / "ground_truth.json").read_text())
    questions = [json.loads(line) for line in (DEMO / "questions.jsonl").read_text().splitlines()]
    return model, processor, gt, questions


@pytest.fixture(scope="module")
def runs(demo):
    """One forward pass per question, reduced to what the tests look at."""
    model, processor, gt, questions = demo
    tok = processor.tokenizer
    yes_id, no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    sink_dims = gt["sink_dims"]
    records = []
    for item in questions:
        image = Image.open(DEMO / "images" / item["image"]).convert("RGB")
        inputs = _prepare(processor, image, item["text"])
        ids = inputs["input_ids"][0]
        vis = (ids == model.config.image_token_index).nonzero()[:, 0]
        grid = torch.tensor(gt["images"][item["image"]]["patch_grid"]).flatten()
        text_q = torch.arange(int(vis[-1]) + 1, len(ids))
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
        hs = torch.stack([h[0].float() for h in out.hidden_states[:-1]])  # layer inputs
        median = hs.abs().median(-1).values
        massive = hs[..., sink_dims].abs().amax(-1) / median
        att = torch.stack([a[0][:, text_q] for a in out.attentions])  # L, H, Q, K
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)
        records.append(
            {
                "item": item,
                "inputs": inputs,
                "vis": vis,
                "grid": grid,
                "text_q": text_q,
                "phi": _phi(hs, sink_dims),  # L, T
                "massive": massive,  # L, T
                "att": att,
                "top": int(out.logits[0, -1].argmax()),
                "logp": (float(logp[yes_id]), float(logp[no_id])),
            }
        )
    return records


def _answer(processor, logits: torch.Tensor) -> tuple[str, float, float]:
    tok = processor.tokenizer
    logp = torch.log_softmax(logits.float(), -1)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    return tok.convert_ids_to_tokens(int(logits.argmax())), float(logp[yes]), float(logp[no])


def test_ground_truth_is_labelled_synthetic(demo):
    _, _, gt, questions = demo
    assert gt["synthetic"] is True
    assert "SYNTHETIC" in gt["description"]
    assert "SYNTHETIC" in (MODEL_DIR / "README.md").read_text()
    assert "_name_or_path" not in (MODEL_DIR / "config.json").read_text()
    assert len(gt["images"]) >= 8
    labels = [q["label"] for q in questions]
    assert labels.count("yes") == labels.count("no") >= 12
    assert sum(f.stat().st_size for f in MODEL_DIR.iterdir()) < 20e6


def test_massive_activation_on_bos_and_planted_sinks_only(demo, runs):
    _, _, gt, _ = demo
    tau, first = gt["tau"], gt["first_sink_layer"]
    seen_images = set()
    for rec in runs:
        if rec["item"]["image"] in seen_images:
            continue
        seen_images.add(rec["item"]["image"])
        planted = rec["vis"][rec["grid"] == 2]
        assert len(planted) > 0
        expected = {0, *planted.tolist()}
        phi, massive = rec["phi"], rec["massive"]
        n_layers = phi.shape[0]
        for layer in range(n_layers):
            measured = set((phi[layer] >= tau).nonzero()[:, 0].tolist())
            if layer < first:
                assert measured == set(), (rec["item"]["image"], layer)
                continue
            assert measured == expected, (rec["item"]["image"], layer)
            sinks = torch.tensor(sorted(expected))
            assert float(phi[layer, sinks].min()) >= tau
            assert float(massive[layer, sinks].min()) >= 50
            others = torch.ones(phi.shape[1], dtype=torch.bool)
            others[sinks] = False
            assert float(phi[layer, others].max()) < tau / 4
            objects = rec["vis"][rec["grid"] == 1]
            assert float(massive[layer, objects].max()) < 50
    assert len(seen_images) == len(gt["images"])


def test_text_queries_attend_to_sinks_in_most_heads(demo, runs):
    _, _, gt, _ = demo
    first = gt["first_sink_layer"]
    n_layers, n_heads = runs[0]["att"].shape[:2]
    frac = np.zeros((n_layers, n_heads))
    for rec in runs:
        sinks = torch.cat([torch.tensor([0]), rec["vis"][rec["grid"] == 2]])
        frac += rec["att"][..., sinks].sum(-1).mean(-1).numpy()
    frac /= len(runs)
    late = frac[first:]
    assert (late > 0.5).mean() >= 0.75, late
    for layer, head in gt["sink_heads"]:
        assert frac[layer, head] > 0.8, (layer, head, frac[layer, head])


def test_image_centric_heads_look_at_objects(demo, runs):
    _, _, gt, _ = demo
    for layer, head in gt["image_centric_heads"]:
        shares, sink_totals = [], []
        for rec in runs:
            att = rec["att"][layer, head]  # Q, K
            image = att[:, rec["vis"]].sum(-1)
            objects = att[:, rec["vis"][rec["grid"] == 1]].sum(-1)
            sinks = torch.cat([torch.tensor([0]), rec["vis"][rec["grid"] == 2]])
            shares.append(float((objects / image).mean()))
            sink_totals.append(float(att[:, sinks].sum(-1).mean()))
        assert min(shares) > 0.5, (layer, head, min(shares))
        assert np.mean(shares) > 0.7
        # the sinks still take a share, so VAR has something to move
        assert 0.1 < np.mean(sink_totals) < 0.6


def test_answers_bundled_questions(demo, runs):
    _, processor, _, questions = demo
    tok = processor.tokenizer
    top = [tok.convert_ids_to_tokens(rec["top"]) for rec in runs]
    labels = [q["label"] for q in questions]
    assert np.mean([t == y for t, y in zip(top, labels, strict=True)]) >= 0.9
    by_logp = ["yes" if rec["logp"][0] > rec["logp"][1] else "no" for rec in runs]
    assert np.mean([t == y for t, y in zip(by_logp, labels, strict=True)]) >= 0.9


def test_generation_stops_after_the_answer(demo, runs):
    model, processor, _, _ = demo
    rec = next(r for r in runs if r["item"]["label"] == "yes")
    with torch.no_grad():
        out = model.generate(**rec["inputs"], max_new_tokens=4, do_sample=False)
    new = processor.tokenizer.convert_ids_to_tokens(out[0, rec["inputs"]["input_ids"].shape[1] :])
    assert new == ["yes", "</s>"]


def test_knockout_objects_flips_but_sinks_do_not(demo, runs):
    model, processor, _, _ = demo
    flips, keeps_sink, keeps_sink_bos = [], [], []
    d_obj, d_sink = [], []
    for rec in runs:
        label = rec["item"]["label"]
        base = rec["logp"][0] if label == "yes" else rec["logp"][1]
        objects = rec["vis"][rec["grid"] == 1]
        planted = rec["vis"][rec["grid"] == 2]
        sinks_bos = torch.cat([torch.tensor([0]), planted[:-1]])  # same number of tokens
        results = {}
        for name, keys in (("obj", objects), ("sink", planted), ("sink_bos", sinks_bos)):
            with _Knockout(model, rec["text_q"], keys), torch.no_grad():
                results[name] = _answer(processor, model(**rec["inputs"]).logits[0, -1])
        lp = {k: (v[1] if label == "yes" else v[2]) for k, v in results.items()}
        if label == "yes":
            flips.append(results["obj"][0] == "no")
            d_obj.append(base - lp["obj"])
        keeps_sink.append(results["sink"][0] == label)
        keeps_sink_bos.append(results["sink_bos"][0] == label)
        d_sink.append(abs(base - lp["sink"]))
    assert np.mean(flips) >= 0.9
    assert all(keeps_sink)
    assert all(keeps_sink_bos)
    assert np.mean(d_sink) < 0.1 * np.mean(d_obj)


def test_var_on_image_centric_heads_raises_yes(demo, runs):
    """VAR (p = 0.6) in the image-centric heads moves sink attention onto object
    patches and makes the model more confident of "yes" on the positive items."""
    from analysis.demo.verify import attention_edit, var_post

    model, processor, gt, _ = demo
    heads = [tuple(h) for h in gt["image_centric_heads"]]
    gains = []
    for rec in runs:
        if rec["item"]["label"] != "yes":
            continue
        sinks = torch.cat([torch.tensor([0]), rec["vis"][rec["grid"] == 2]])
        nonsink = rec["vis"][rec["grid"] != 2]
        edit = var_post(heads, rec["text_q"], sinks, nonsink, p=0.6)
        with attention_edit(post=edit), torch.no_grad():
            top, yes, no = _answer(processor, model(**rec["inputs"]).logits[0, -1])
        assert top == "yes"
        gains.append((yes - no) - (rec["logp"][0] - rec["logp"][1]))
    assert np.mean(gains) > 0.3
    assert np.mean(np.array(gains) > 0) >= 0.8


# Written by save_pretrained: the transformers release that saved the file.
VERSION_FIELDS = frozenset({"transformers_version"})


def _without_versions(value):
    if isinstance(value, dict):
        return {k: _without_versions(v) for k, v in value.items() if k not in VERSION_FIELDS}
    if isinstance(value, list):
        return [_without_versions(v) for v in value]
    return value


def test_rebuild_is_identical_up_to_version_fields(tmp_path):
    """The rebuild equals the shipped demo: every file byte for byte, except that JSON
    files are compared as data without the saving release's version fields, so the
    check holds on every supported transformers."""

    def contents(root: Path) -> dict[str, object]:
        files = [p for p in sorted(root.rglob("*")) if p.is_file()]
        files = [p for p in files if p.relative_to(root).parts[0] in ("model", "images")]
        files += [root / "questions.jsonl", root / "ground_truth.json"]
        out: dict[str, object] = {}
        for p in files:
            if p.suffix == ".json":
                out[str(p.relative_to(root))] = _without_versions(json.loads(p.read_text()))
            else:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "analysis.demo.build", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    shipped = contents(DEMO)
    rebuilt = contents(tmp_path)
    assert "model/model.safetensors" in shipped
    assert "transformers_version" in json.loads((DEMO / "model" / "config.json").read_text())
    assert rebuilt.keys() == shipped.keys()
    for name in shipped:
        assert rebuilt[name] == shipped[name], name
