"""Model inputs and image-token geometry.

:func:`build_inputs` turns (images, prompt) pairs into model tensors with the
model's own processor and chat template, and returns, aligned with the token
sequence, which positions are visual, which are text, which text positions are
queries after the image, and for every visual token its image index, tile, row,
column and whether it is a separator (LLaVA-NeXT's ``image_newline``).
Each family (:mod:`analysis.families`) says where its visual tokens sit
(``Family.image_tokens``) and how its processor wants a batch's images
(``Family.processor_images``); nothing here special-cases a family.

Nothing here hard-codes a token count or id: counts are derived from the
config and the processor's image sizes, then checked against the visual
positions actually present in ``input_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from PIL import Image

from analysis.errors import UserInputError, VsinkError
from analysis.images import (  # noqa: F401  (re-exported: their old home)
    IMAGE_SUFFIXES,
    ImageError,
    ImageLike,
    check_images,
    collect_images,
    load_image,
)

if TYPE_CHECKING:
    from analysis.families import Family
    from analysis.loading import LoadedModel

# ``LoadedModel.extra[MAX_LENGTH_KEY]``: the longest prompt build_batch accepts, set by
# the caller (``vsink --max-length``); by default the model's max_position_embeddings.
MAX_LENGTH_KEY = "max_length"


class GeometryError(VsinkError, RuntimeError):
    """The visual tokens in the sequence do not match the geometry the config implies."""


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class GridSpec:
    """One rectangular patch grid of one image (LLaVA-NeXT has two per image).

    ``extent`` is the (x0, y0, x1, y1) box, in original-image pixels, that the
    grid covers, so per-token values can be drawn over the image.
    """

    image: int
    tile: int
    name: str
    rows: int
    cols: int
    extent: tuple[float, float, float, float]
    has_separator_column: bool = False


@dataclass
class VisualGeometry:
    """Per-visual-token geometry of one sample, aligned with ``positions``."""

    positions: Int[torch.Tensor, " vis"]
    image: Int[torch.Tensor, " vis"]
    tile: Int[torch.Tensor, " vis"]
    row: Int[torch.Tensor, " vis"]
    col: Int[torch.Tensor, " vis"]
    separator: Bool[torch.Tensor, " vis"]
    grids: list[GridSpec]

    @property
    def n_visual(self) -> int:
        return int(self.positions.numel())

    def grid(self, image: int = 0, tile: int | None = None) -> GridSpec:
        """The grid of ``image``; by default the highest-resolution tile (NeXT: the anyres grid)."""
        grids = [g for g in self.grids if g.image == image]
        if not grids:
            raise IndexError(f"No image {image} in this sample ({len(self.image_sizes())} images).")
        if tile is None:
            return max(grids, key=lambda g: g.rows * g.cols)
        for g in grids:
            if g.tile == tile:
                return g
        raise IndexError(f"Image {image} has no tile {tile}; tiles: {[g.tile for g in grids]}.")

    def image_sizes(self) -> list[int]:
        return sorted({g.image for g in self.grids})

    def to_grid(
        self, values: Float[torch.Tensor, " vis"], image: int = 0, tile: int | None = None
    ) -> Float[torch.Tensor, "row col"]:
        """Scatter per-visual-token values onto the image grid (NaN where no token)."""
        if values.shape[-1] != self.n_visual:
            raise ValueError(
                f"Expected {self.n_visual} per-visual-token values, got {values.shape}."
            )
        spec = self.grid(image, tile)
        out = torch.full((spec.rows, spec.cols), float("nan"), dtype=torch.float32)
        sel = (self.image == image) & (self.tile == spec.tile) & ~self.separator
        out[self.row[sel], self.col[sel]] = values[sel].detach().float().cpu()
        return out


@dataclass
class TokenLayout:
    """Where everything is in one sample's token sequence (padding included)."""

    input_ids: Int[torch.Tensor, " pos"]
    attention_mask: Bool[torch.Tensor, " pos"]
    visual: Bool[torch.Tensor, " pos"]
    text: Bool[torch.Tensor, " pos"]
    queries: Bool[torch.Tensor, " pos"]
    bos_position: int | None
    geometry: VisualGeometry
    tokens: list[str]

    @property
    def n_pos(self) -> int:
        return int(self.input_ids.numel())

    @property
    def first_position(self) -> int:
        """First non-pad position (left padding shifts everything right)."""
        return int(self.attention_mask.int().argmax())


@dataclass
class ModelInputs:
    """A batch of model inputs plus one :class:`TokenLayout` per sample."""

    tensors: dict[str, torch.Tensor]
    layouts: list[TokenLayout]
    prompts: list[str]
    image_sizes: list[list[tuple[int, int]]] = field(default_factory=list)
    #: The family whose processor built the tensors: which of them are per image, and how
    #: one sample's are cut out (:meth:`select`). None: one entry per image, the default.
    family: Family | None = None

    @property
    def per_image_tensors(self) -> frozenset[str]:
        return self.family.per_image_tensors if self.family else _PER_IMAGE_TENSORS

    @property
    def input_ids(self) -> Int[torch.Tensor, "batch pos"]:
        return self.tensors["input_ids"]

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def stack(self, name: str) -> Bool[torch.Tensor, "batch pos"]:
        """Stack a per-sample boolean mask (``visual``, ``text``, ``queries``, ``attention_mask``)."""
        return torch.stack([getattr(layout, name) for layout in self.layouts])

    @property
    def visual(self) -> Bool[torch.Tensor, "batch pos"]:
        return self.stack("visual")

    @property
    def text(self) -> Bool[torch.Tensor, "batch pos"]:
        return self.stack("text")

    @property
    def queries(self) -> Bool[torch.Tensor, "batch pos"]:
        return self.stack("queries")

    @property
    def bos(self) -> Bool[torch.Tensor, "batch pos"]:
        """True at each sample's BOS position (all False where a sample has none)."""
        out = torch.zeros_like(self.stack("attention_mask"))
        for index, layout in enumerate(self.layouts):
            if layout.bos_position is not None:
                out[index, layout.bos_position] = True
        return out

    def forward_kwargs(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Everything but ``input_ids``, moved to ``device``, for ``bridge(input_ids, **kw)``."""
        out = {}
        for key, value in self.tensors.items():
            if key == "input_ids":
                continue
            out[key] = value.to(device) if device is not None else value
        return out

    def extend(self, new_ids: Int[torch.Tensor, "batch new"]) -> ModelInputs:
        """These inputs with ``new_ids`` appended to every row (generated text tokens).

        Appended positions are attended, text, and queries after the image, like the
        rows a cached decoding step adds; per-token tensors other than the mask
        (e.g. Gemma 3's ``token_type_ids``) get 0, the text type.
        """
        new_ids = new_ids.to(self.input_ids.device, self.input_ids.dtype)
        if new_ids.dim() != 2 or new_ids.shape[0] != self.batch_size:
            raise ValueError(
                f"extend needs [batch, new] token ids for a batch of {self.batch_size}, "
                f"got shape {tuple(new_ids.shape)}."
            )
        n_new = int(new_ids.shape[1])
        tensors: dict[str, torch.Tensor] = {}
        for key, value in self.tensors.items():
            if key == "input_ids":
                tensors[key] = torch.cat([value, new_ids], dim=1)
            elif key not in self.per_image_tensors and value.shape[:2] == self.input_ids.shape:
                fill = 1 if key == "attention_mask" else 0
                extra = value.new_full((self.batch_size, n_new, *value.shape[2:]), fill)
                tensors[key] = torch.cat([value, extra], dim=1)
            else:
                tensors[key] = value
        layouts = []
        for index, layout in enumerate(self.layouts):
            ones = torch.ones(n_new, dtype=torch.bool)
            zeros = torch.zeros(n_new, dtype=torch.bool)
            ids = new_ids[index].cpu()
            layouts.append(
                TokenLayout(
                    input_ids=torch.cat([layout.input_ids, ids]),
                    attention_mask=torch.cat([layout.attention_mask, ones]),
                    visual=torch.cat([layout.visual, zeros]),
                    text=torch.cat([layout.text, ones]),
                    queries=torch.cat([layout.queries, ones]),
                    bos_position=layout.bos_position,
                    geometry=layout.geometry,
                    tokens=layout.tokens + [str(int(i)) for i in ids],
                )
            )
        return ModelInputs(
            tensors, layouts, list(self.prompts), list(self.image_sizes), self.family
        )

    def select(self, index: int) -> ModelInputs:
        """Sample ``index`` as a batch of one with its padding stripped (reference runs)."""
        layout = self.layouts[index]
        start = layout.first_position
        counts = [len(sizes) for sizes in self.image_sizes]
        first, n_images = sum(counts[:index]), counts[index]
        if self.family is not None:
            tensors = self.family.select_images(self.tensors, index, first, n_images)
        else:
            tensors = {
                key: value[first : first + n_images]
                for key, value in self.tensors.items()
                if key in _PER_IMAGE_TENSORS
            }
        for key, value in self.tensors.items():
            if key in self.per_image_tensors:
                continue
            if value.shape[:2] == self.input_ids.shape:
                tensors[key] = value[index : index + 1, start:]
            else:
                raise ValueError(
                    f"Cannot split input tensor {key!r} of shape {tuple(value.shape)}."
                )
        shifted = TokenLayout(
            input_ids=layout.input_ids[start:],
            attention_mask=layout.attention_mask[start:],
            visual=layout.visual[start:],
            text=layout.text[start:],
            queries=layout.queries[start:],
            bos_position=None if layout.bos_position is None else layout.bos_position - start,
            geometry=_shift_geometry(layout.geometry, -start),
            tokens=layout.tokens[start:],
        )
        return ModelInputs(
            tensors, [shifted], [self.prompts[index]], [self.image_sizes[index]], self.family
        )


# Tensors with one entry per image (not per sample) when no family says otherwise.
_PER_IMAGE_TENSORS = frozenset({"pixel_values", "image_sizes"})


def _shift_geometry(geometry: VisualGeometry, offset: int) -> VisualGeometry:
    return VisualGeometry(
        positions=geometry.positions + offset,
        image=geometry.image,
        tile=geometry.tile,
        row=geometry.row,
        col=geometry.col,
        separator=geometry.separator,
        grids=geometry.grids,
    )


def visual_geometry(
    model: LoadedModel,
    input_ids: Int[torch.Tensor, " pos"],
    image_sizes: list[tuple[int, int]],
) -> VisualGeometry:
    """Geometry of every visual token of one sample, checked against ``input_ids``.

    ``image_sizes`` are the original (height, width) of the sample's images in
    prompt order.
    """
    positions = (input_ids == model.image_token_id).nonzero().flatten()
    grids: list[GridSpec] = []
    rows: list[tuple[int, int, int, int, bool]] = []
    for index, (specs, tokens) in enumerate(model.family.sample_tokens(model, image_sizes)):
        grids += specs
        rows += [(index, tile, r, c, sep) for tile, r, c, sep in tokens]
    if len(rows) != positions.numel():
        raise GeometryError(
            f"{model.family.name}: the config implies {len(rows)} visual tokens for images of "
            f"sizes {image_sizes}, but input_ids holds {positions.numel()} image tokens "
            f"(id {model.image_token_id}). Is the prompt's image placeholder count right?"
        )
    table = torch.tensor([r[:4] for r in rows], dtype=torch.long).reshape(-1, 4)
    return VisualGeometry(
        positions=positions,
        image=table[:, 0],
        tile=table[:, 1],
        row=table[:, 2],
        col=table[:, 3],
        separator=torch.tensor([r[4] for r in rows], dtype=torch.bool),
        grids=grids,
    )


# --------------------------------------------------------------------------- inputs


def format_prompt(model: LoadedModel, prompt: str, n_images: int) -> str:
    """Wrap ``prompt`` in the model's chat template with ``n_images`` image slots first.

    A prompt that already contains the processor's image placeholder is used
    verbatim, so users can pass fully formatted prompts.
    """
    image_token = getattr(model.processor, "image_token", None) or "<image>"
    boi = getattr(model.processor, "boi_token", None)
    if image_token in prompt or (boi and boi in prompt):
        return prompt
    content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": prompt})
    messages = [{"role": "user", "content": content}]
    if getattr(model.processor, "chat_template", None) is None:
        raise UserInputError(
            f"{model.name_or_path} has no chat template; pass a prompt that already contains "
            f"the image placeholder {image_token!r}."
        )
    return model.processor.apply_chat_template(messages, add_generation_prompt=True)


def build_inputs(
    model: LoadedModel,
    images: ImageLike | list[ImageLike],
    prompt: str,
    *,
    device: torch.device | str | None = None,
) -> ModelInputs:
    """Inputs for one sample: one or more images and a prompt."""
    image_list = images if isinstance(images, list | tuple) else [images]
    return build_batch(model, [(list(image_list), prompt)], device=device)


def build_batch(
    model: LoadedModel,
    samples: list[tuple[ImageLike | list[ImageLike], str]],
    *,
    device: torch.device | str | None = None,
) -> ModelInputs:
    """Inputs for several samples, left-padded so generation continues every row."""
    if not samples:
        raise UserInputError("build_batch needs at least one (images, prompt) sample.")
    pil_lists: list[list[Image.Image]] = []
    prompts: list[str] = []
    for images, prompt in samples:
        image_list = list(images) if isinstance(images, list | tuple) else [images]
        if not image_list:
            raise UserInputError("Every sample needs at least one image.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserInputError("Every sample needs a non-empty text prompt.")
        pil_lists.append([load_image(img) for img in image_list])
        prompts.append(format_prompt(model, prompt, len(image_list)))
    # Left padding for this call only: the shared tokenizer's padding_side stays as it is.
    encoded = model.processor(
        images=model.family.processor_images(pil_lists),
        text=prompts,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    tensors = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
    check_length(model, int(tensors["input_ids"].shape[1]))
    sizes = [[(img.height, img.width) for img in images] for images in pil_lists]
    layouts = [
        _layout(model, tensors["input_ids"][i], tensors["attention_mask"][i], sizes[i])
        for i in range(len(prompts))
    ]
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    if model.dtype != torch.float32 and "pixel_values" in tensors:
        tensors["pixel_values"] = tensors["pixel_values"].to(model.dtype)
    return ModelInputs(tensors, layouts, prompts, sizes, model.family)


def context_length(model: LoadedModel) -> int | None:
    """Positions the language model was built for (``max_position_embeddings``), if known."""
    value = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return int(value) if value else None


def check_length(model: LoadedModel, n_tokens: int) -> None:
    """Refuse a prompt longer than the model's context (or the caller's ``max_length``)."""
    override = model.extra.get(MAX_LENGTH_KEY)
    limit = override if override is not None else context_length(model)
    if limit is not None and n_tokens > limit:
        source = (
            "the --max-length given"
            if override is not None
            else "the model's context (max_position_embeddings)"
        )
        raise UserInputError(
            f"The prompt is {n_tokens} tokens, longer than {limit}, {source}; shorten it, "
            "or pass --max-length N (extra['max_length'] in Python) to run it anyway."
        )


def _layout(
    model: LoadedModel,
    input_ids: Int[torch.Tensor, " pos"],
    attention_mask: Int[torch.Tensor, " pos"],
    image_sizes: list[tuple[int, int]],
) -> TokenLayout:
    input_ids = input_ids.cpu()
    mask = attention_mask.cpu().bool()
    geometry = visual_geometry(model, input_ids, image_sizes)
    visual = torch.zeros_like(mask)
    visual[geometry.positions] = True
    text = mask & ~visual
    queries = text.clone()
    if geometry.n_visual:
        queries[: int(geometry.positions.max()) + 1] = False
    first = int(mask.int().argmax())
    bos = model.bos_token_id
    bos_position = first if bos is not None and int(input_ids[first]) == bos else None
    return TokenLayout(
        input_ids=input_ids,
        attention_mask=mask,
        visual=visual,
        text=text,
        queries=queries,
        bos_position=bos_position,
        geometry=geometry,
        tokens=model.tokenizer.convert_ids_to_tokens(input_ids.tolist()),
    )


def describe_layout(layout: TokenLayout) -> dict[str, Any]:
    """Summary of a sample's token layout (for ``vsink info`` and result files)."""
    geometry = layout.geometry
    return {
        "n_positions": int(layout.attention_mask.sum()),
        "n_visual": geometry.n_visual,
        "n_separators": int(geometry.separator.sum()),
        "n_text": int(layout.text.sum()),
        "n_queries_after_image": int(layout.queries.sum()),
        "bos_position": layout.bos_position,
        "first_visual_position": int(geometry.positions.min()) if geometry.n_visual else None,
        "last_visual_position": int(geometry.positions.max()) if geometry.n_visual else None,
        "grids": [
            {
                "image": g.image,
                "tile": g.tile,
                "name": g.name,
                "rows": g.rows,
                "cols": g.cols,
                "newline_column": g.has_separator_column,
            }
            for g in geometry.grids
        ],
    }
