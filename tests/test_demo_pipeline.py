"""The toolkit on the synthetic demo model, through load_model: ground truth is known."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from analysis.ablation import ablate
from analysis.attention import eager_attention
from analysis.capture import forward
from analysis.cli import app
from analysis.dims import discover_dims
from analysis.generation import answer_logprobs, generate
from analysis.heads import score_heads
from analysis.loading import DEMO_MODEL_DIR
from analysis.sinks import find_sinks, validate_sinks
from analysis.tokens import build_batch, build_inputs
from analysis.var import VarConfig, VarIntervention, run_with_var

DEMO = DEMO_MODEL_DIR.parent
TRUTH = json.loads((DEMO / "ground_truth.json").read_text())
QUESTIONS = [json.loads(line) for line in (DEMO / "questions.jsonl").read_text().splitlines()]
IMAGES = sorted((DEMO / "images").glob("*.png"))
PROMPT = "Describe the image."


@pytest.fixture(scope="module")
def demo(demo_model):
    return demo_model


@pytest.fixture(scope="module")
def per_image(demo):
    return [build_inputs(demo, path, PROMPT) for path in IMAGES]


def _truth_mask(layout, name):
    cells = {tuple(c) for c in TRUTH["images"][name]["sink_patches"]}
    geometry = layout.geometry
    return torch.tensor(
        [(int(r), int(c)) in cells for r, c in zip(geometry.row, geometry.col, strict=True)]
    )


def _object_positions(layout, name):
    grid = TRUTH["images"][name]["patch_grid"]
    geometry = layout.geometry
    keep = [grid[int(r)][int(c)] == 1 for r, c in zip(geometry.row, geometry.col, strict=True)]
    return geometry.positions[torch.tensor(keep)].tolist()


def test_loads_with_hf_parity(demo, per_image):
    assert demo.family.name == "llava"
    assert (demo.n_layers, demo.d_model) == (6, 1024)
    reference = AutoModelForImageTextToText.from_pretrained(
        DEMO_MODEL_DIR, attn_implementation="eager", dtype=torch.float32
    ).eval()
    inputs = per_image[0]
    with torch.no_grad():
        expected = reference(**inputs.tensors).logits
    torch.testing.assert_close(forward(demo, inputs), expected, atol=1e-5, rtol=0)


def test_discovered_dims_equal_planted(demo, per_image):
    result = discover_dims(demo, per_image, show_progress=False)
    assert result.dims == sorted(TRUTH["sink_dims"])
    for row in result.per_dim():
        assert row["ratio_bos"] > 1000
        assert row["ratio_visual"] > 1000


def test_sinks_match_planted_patches(demo, per_image):
    for path, inputs in zip(IMAGES, per_image, strict=True):
        result = find_sinks(demo, inputs, dims=TRUTH["sink_dims"], tau=20.0)
        truth = _truth_mask(inputs.layouts[0], path.name)
        scores = validate_sinks(result, [truth], layers=range(2, demo.n_layers))[0]
        assert all(s["f1"] == 1.0 for s in scores), path.name
        assert not result.is_sink()[0, :2].any()  # nothing before layer 2
        bos = inputs.layouts[0].bos_position
        assert result.text_sinks()[0, 2:, bos].all()
        assert int(result.text_sinks()[0, 2].sum()) == 1  # BOS is the only text sink


def test_batched_sinks_equal_single(demo):
    inputs = build_batch(
        demo, [(IMAGES[0], PROMPT), (IMAGES[1], "Is there a red object in the image?")]
    )
    batched = find_sinks(demo, inputs, dims=TRUTH["sink_dims"])
    for index in range(2):
        single = find_sinks(demo, inputs.select(index), dims=TRUTH["sink_dims"])
        start = inputs.layouts[index].first_position
        assert torch.equal(batched.is_sink()[index, :, start:], single.is_sink()[0])


def test_ground_truth_heads_are_image_centric(demo):
    batches = [build_inputs(demo, path, "Is there a red object in the image?") for path in IMAGES]
    scores = score_heads(demo, batches, dims=TRUTH["sink_dims"], show_progress=False)
    found = set(scores.image_centric_heads())
    assert {tuple(h) for h in TRUTH["image_centric_heads"]} <= found
    frac = scores.per_sample()["selected"].mean(0)
    for layer, head in TRUTH.get("sink_heads", []):
        assert frac[layer, head] < 0.5
    # Heads in layers without a visual sink (r = 1 by definition) rank after all others.
    ranked = scores.ranked(top=demo.n_layers * demo.n_heads)
    first = TRUTH["first_sink_layer"]
    tail = [row["layer"] < first for row in ranked]
    assert tail == sorted(tail)
    assert {(r["layer"], r["head"]) for r in ranked[:2]} == {
        tuple(h) for h in TRUTH["image_centric_heads"]
    }


def test_answers_and_var_on_the_bundled_questions(demo):
    items = QUESTIONS[:12]
    inputs = build_batch(demo, [(DEMO / "images" / q["image"], q["text"]) for q in items])
    labels = [q["label"] for q in items]
    base, _ = answer_logprobs(demo, inputs, ["yes", "no"])
    predicted = ["yes" if row[0] > row[1] else "no" for row in base]
    assert predicted == labels
    var = VarIntervention(demo, inputs, dims=TRUTH["sink_dims"])
    with_var, _ = answer_logprobs(demo, inputs, ["yes", "no"], fwd_hooks=var.fwd_hooks())
    record = var.record()
    assert record.total_changed > 0
    assert record.layers == [2, 3, 4]
    margin = (with_var[:, 0] - with_var[:, 1]) - (base[:, 0] - base[:, 1])
    positives = torch.tensor([label == "yes" for label in labels])
    assert margin[positives].mean() > 0.2  # VAR strengthens the image evidence for "yes"
    assert ["yes" if r[0] > r[1] else "no" for r in with_var] == labels
    # p = 0 reproduces the baseline logits exactly on one attention path, and within
    # fp32 tolerance across paths (row-sparse VAR vs SDPA baseline).
    with eager_attention(demo):
        logits, _ = run_with_var(demo, inputs, dims=TRUTH["sink_dims"], config=VarConfig(p=0.0))
        assert torch.equal(logits, forward(demo, inputs))
    logits, _ = run_with_var(demo, inputs, dims=TRUTH["sink_dims"], config=VarConfig(p=0.0))
    # Routed paths differ in summation order only: fp32 noise relative to logits of ~15.
    torch.testing.assert_close(logits, forward(demo, inputs), atol=1e-5, rtol=1e-5)


def test_var_raises_object_attention_in_image_centric_heads(demo):
    from analysis import hooks

    name = IMAGES[0].name
    inputs = build_inputs(demo, IMAGES[0], "Is there a red object in the image?")
    objects = torch.tensor(_object_positions(inputs.layouts[0], name))
    layer, head = TRUTH["image_centric_heads"][0]
    seen = {}

    def grab(key):
        def hook(pattern, hook):
            seen[key] = pattern[0, head, -1, objects].sum().item()

        return hook

    var = VarIntervention(demo, inputs, dims=TRUTH["sink_dims"])
    forward(demo, inputs, [(hooks.attn_pattern(layer), grab("base"))])
    # Hooks run in order: VAR edits the pattern, then we read it.
    forward(demo, inputs, [*var.fwd_hooks(), (hooks.attn_pattern(layer), grab("var"))])
    assert seen["var"] > seen["base"] + 0.05


def test_sink_knockout_barely_matters_object_knockout_flips(demo):
    """Same number of tokens knocked out: sinks move the answer less than object tokens.

    The answer is near-certain (p ~ 0.997), so effects are read on the yes-vs-no
    log-odds, which does not saturate; averaged over positive questions.
    """
    sink_changes, object_changes = [], []
    for item in [q for q in QUESTIONS if q["label"] == "yes"][:6]:
        inputs = build_inputs(demo, DEMO / "images" / item["image"], item["text"])
        dims = TRUTH["sink_dims"]
        sinks = ablate(demo, inputs, targets=["sinks"], answers=["yes", "no"], dims=dims, draws=1)
        objects = _object_positions(inputs.layouts[0], item["image"])
        n_sinks = len(TRUTH["images"][item["image"]]["sink_patches"])
        same_count = ablate(
            demo, inputs, targets=["positions"], answers=["yes", "no"], positions=objects[:n_sinks]
        )
        every_object = ablate(
            demo, inputs, targets=["positions"], answers=["yes", "no"], positions=objects
        )
        for result, out in ((sinks, sink_changes), (same_count, object_changes)):
            odds = result.answer_logprob[:, 0, 0] - result.answer_logprob[:, 0, 1]
            out.append(abs(float(odds[1] - odds[0])))
        assert sinks.greedy[1] == sinks.greedy[0] == ["yes"]
        assert every_object.greedy[1] == ["no"]  # without the object the answer flips
    mean_sink = sum(sink_changes) / len(sink_changes)
    mean_object = sum(object_changes) / len(object_changes)
    assert mean_sink < 0.5
    assert mean_object > 2 * mean_sink


def test_generation_with_var_answers(demo):
    item = next(q for q in QUESTIONS if q["label"] == "yes")
    inputs = build_inputs(demo, DEMO / "images" / item["image"], item["text"])
    var = VarIntervention(demo, inputs, dims=TRUTH["sink_dims"])
    out = generate(demo, inputs, max_new_tokens=4, fwd_hooks=var.fwd_hooks())
    assert out.texts == ["yes"]
    assert sum(var.record().decode_rows) > 0


def test_cli_demo_and_dims(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--json", str(tmp_path / "demo.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "demo.json").read_text())
    assert payload["dims_found"] == payload["dims_planted"] == sorted(TRUTH["sink_dims"])
    assert all(row["f1_min"] == 1.0 for row in payload["images"])
    result = runner.invoke(app, ["dims", "--json", str(tmp_path / "dims.json")])
    assert result.exit_code == 0, result.output
    dims = json.loads((tmp_path / "dims.json").read_text())
    assert dims["dims"] == sorted(TRUTH["sink_dims"])
    assert dims["config"]["thresholds"]["min_ratio"] == 100.0
    assert "transformers" in dims["config"]["versions"]
    result = runner.invoke(
        app, ["sinks", "--html", str(tmp_path / "s.html"), "--json", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.html").stat().st_size > 10_000
    sink_tokens = json.loads((tmp_path / "s.json").read_text())["sink_tokens"]
    planted = {tuple(c) for c in TRUTH["images"]["demo_00.png"]["sink_patches"]}
    first = TRUTH["first_sink_layer"]
    assert all(not row["visual_cells"] for row in sink_tokens[:first])
    assert all({tuple(c) for c in row["visual_cells"]} == planted for row in sink_tokens[first:])
    assert all(0 in row["positions"] for row in sink_tokens[first:])  # BOS


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["sinks", "--image", str(tmp_path / "nope.png")])
    assert result.exit_code == 2
    assert "No such image" in result.output
    assert "Traceback" not in result.output


def test_attention_mass_reference_agrees_with_phi_sinks(demo, per_image):
    from analysis.sinks import attention_mass_truth

    for path, inputs in zip(IMAGES[:3], per_image[:3], strict=True):
        by_attention = attention_mass_truth(demo, inputs)[0]
        assert torch.equal(by_attention, _truth_mask(inputs.layouts[0], path.name)), path.name
