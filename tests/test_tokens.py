"""Image-token geometry against what the processor and config imply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

from analysis.tokens import ImageError, build_batch, build_inputs, load_image


def test_llava_grid(tiny_models):
    model = tiny_models["llava"]
    inputs = build_inputs(model, make_image(30, 50), "is there a red object ?")
    layout = inputs.layouts[0]
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    geometry = layout.geometry
    assert geometry.n_visual == side * side == int(layout.visual.sum())
    assert torch.equal(geometry.row, torch.arange(side * side) // side)
    assert torch.equal(geometry.col, torch.arange(side * side) % side)
    assert not geometry.separator.any()
    # Visual positions are exactly the image-token positions, contiguous.
    ids = layout.input_ids
    assert torch.equal(geometry.positions, (ids == model.image_token_id).nonzero().flatten())
    # Queries: text after the last visual token, and only those.
    last = int(geometry.positions.max())
    assert layout.queries[: last + 1].sum() == 0
    assert torch.equal(layout.queries[last + 1 :], layout.text[last + 1 :])
    assert layout.bos_position == 0
    assert layout.tokens[0] == "<s>"


@pytest.mark.parametrize(("height", "width"), [(30, 50), (50, 30), (28, 28), (60, 20)])
def test_llava_next_anyres_matches_processor(tiny_models, height, width):
    model = tiny_models["llava_next"]
    inputs = build_inputs(model, make_image(height, width), "describe")
    geometry = inputs.layouts[0].geometry
    processor = model.processor
    crop = model.config.vision_config.image_size
    expected = processor._get_number_of_features(height, width, crop, crop)
    expected -= processor.vision_feature_select_strategy == "default"  # CLS dropped
    assert geometry.n_visual == expected
    base, hires = geometry.grids
    assert (base.rows, base.cols) == (4, 4)
    # One newline per hi-res row, in the last column.
    seps = geometry.separator
    assert int(seps.sum()) == hires.rows
    assert torch.all(geometry.col[seps] == hires.cols)
    assert torch.all(geometry.tile[seps] == 1)
    # The unpadded grid keeps the image's aspect ratio (within one patch row/col).
    assert (
        abs(hires.cols / hires.rows - width / height)
        <= max(1 / hires.rows, 1 / hires.cols) * (width / height) + 0.2
    )


def test_gemma3_grid(tiny_models):
    model = tiny_models["gemma3"]
    inputs = build_inputs(model, make_image(), "describe")
    geometry = inputs.layouts[0].geometry
    assert geometry.n_visual == model.config.mm_tokens_per_image
    tokens = inputs.layouts[0].tokens
    first, last = int(geometry.positions.min()), int(geometry.positions.max())
    assert tokens[first - 1] == "<start_of_image>"
    assert tokens[last + 1] == "<end_of_image>"


def test_two_images_get_their_own_index(tiny):
    inputs = build_inputs(tiny, [make_image(seed=1), make_image(40, 40, seed=2)], "describe")
    geometry = inputs.layouts[0].geometry
    counts = torch.bincount(geometry.image)
    assert counts.numel() == 2
    assert counts.sum() == geometry.n_visual
    # Image 0's tokens all come before image 1's.
    assert (
        geometry.positions[geometry.image == 0].max()
        < geometry.positions[geometry.image == 1].min()
    )


def test_to_grid_round_trip(tiny):
    inputs = build_inputs(tiny, make_image(), "describe")
    geometry = inputs.layouts[0].geometry
    values = torch.arange(geometry.n_visual, dtype=torch.float32)
    spec = geometry.grid()
    grid = geometry.to_grid(values)
    assert grid.shape == (spec.rows, spec.cols)
    sel = (geometry.tile == spec.tile) & ~geometry.separator
    for index in torch.nonzero(sel).flatten()[:20].tolist():
        assert grid[geometry.row[index], geometry.col[index]] == values[index]
    with pytest.raises(ValueError, match="per-visual-token values"):
        geometry.to_grid(values[:-1])


def test_left_padding_layouts(tiny):
    inputs = build_batch(
        tiny, [(make_image(), "describe"), (make_image(), "is there a red object in the image ?")]
    )
    short, long = inputs.layouts
    assert short.first_position > 0
    assert long.first_position == 0
    assert not short.attention_mask[: short.first_position].any()
    assert short.geometry.n_visual == long.geometry.n_visual
    assert int(short.queries.sum()) < int(long.queries.sum())
    single = inputs.select(0)
    assert single.layouts[0].first_position == 0
    assert torch.equal(single.layouts[0].geometry.row, short.geometry.row)


# ----------------------------------------------------------------------------- images


def test_image_conversions(tmp_path):
    gray = Image.fromarray(np.full((10, 12), 128, np.uint8), mode="L")
    assert load_image(gray).mode == "RGB"
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent -> white background
    out = np.asarray(load_image(rgba))
    assert out.shape == (10, 12, 3)
    assert (out == 255).all()
    floats = np.full((5, 6, 3), 0.5)
    assert np.asarray(load_image(floats))[0, 0, 0] == 128
    path = tmp_path / "x.png"
    gray.save(path)
    assert load_image(path).size == (12, 10)
    assert load_image(torch.zeros(3, 8, 9)).size == (9, 8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.png", "not found"),
        (lambda p: (p / "bad.png").write_bytes(b"not a png") and p / "bad.png", "Cannot decode"),
        (lambda p: np.zeros((0, 5, 3), np.uint8), "empty"),
        (lambda p: np.full((4, 4, 3), 2.0), r"\[0, 1\]"),
        (lambda p: np.zeros((4, 4, 3), np.int64), "dtype"),
        (lambda p: 42, "Unsupported image type"),
    ],
)
def test_bad_images_are_clear(tmp_path, make, message):
    with pytest.raises(ImageError, match=message):
        load_image(make(tmp_path))


def test_empty_prompt_rejected(tiny_models):
    with pytest.raises(ValueError, match="non-empty text prompt"):
        build_inputs(tiny_models["llava"], make_image(), "  ")


def test_build_batch_pads_left_without_touching_the_tokenizer(tiny):
    tokenizer = tiny.tokenizer
    assert tokenizer.padding_side == "right"  # the saved tiny tokenizers pad right
    inputs = build_batch(
        tiny, [(make_image(seed=1), "is there a red object in the image ?"), (make_image(), "no")]
    )
    assert tokenizer.padding_side == "right"
    mask = inputs.tensors["attention_mask"].bool()
    short = int(mask.sum(1).argmin())
    assert not mask[short, 0]  # the shorter prompt is padded on the left
    assert mask[:, -1].all()
    assert inputs.layouts[short].first_position == int((~mask[short]).sum())
    # Padding tokens are the pad id; the real tokens equal the sample built alone.
    alone = build_inputs(tiny, make_image(), "no")
    assert torch.equal(inputs.input_ids[short, mask[short]], alone.input_ids[0])


def test_select_cuts_out_each_samples_own_images(tiny):
    """Two images then one: select() gives each sample its own pixels, as if built alone."""
    first = [make_image(seed=1), make_image(40, 40, seed=2)]
    second = [make_image(36, 30, seed=3)]
    batch = build_batch(tiny, [(first, "describe"), (second, "is there a red object ?")])
    assert batch.family is tiny.family
    for index, (images, prompt) in enumerate(
        [(first, "describe"), (second, "is there a red object ?")]
    ):
        alone = build_batch(tiny, [(images, prompt)])
        selected = batch.select(index)
        assert selected.tensors.keys() == alone.tensors.keys()
        for key, value in alone.tensors.items():
            assert torch.equal(selected.tensors[key], value), key
