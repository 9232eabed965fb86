"""Planted LMMs: small checkpoints whose sink dims, sink tokens and heads are known.

THESE ARE NOT TRAINED MODELS. Like the demo (:mod:`analysis.demo.build`) every
weight is written by hand so that the model exhibits, by construction, what the
toolkit measures; unlike the demo, the construction is parametrised by a
:class:`PlantedSpec` so ground truth is known on many models, not one:
family (every supported one), width, depth, heads, the sink dims (1-3, anywhere
but the first and last dim), where the massive activation comes from (an early
MLP, as in LLaMA, or the projector and embeddings), the first layer with sinks,
the fraction of visual tokens that are sinks, sinks on BOS / visual tokens /
both, a delimiter text sink, the image-centric heads, a decoy bias dim that is
large on every token, or no sink dims at all.

:func:`build_planted` writes ``model/`` (``save_pretrained``, float32),
``images/planted_XX.png`` and ``spec.json`` (the spec plus, per image, the
cell map: 0 background, 1 object, 2 sink). :func:`sink_truth` and
:func:`object_truth` turn the spec and cell maps into per-token truth for any
batch built with :func:`analysis.tokens.build_batch`. :data:`ZOO` is the set the
tests run on.

The circuit (every other weight is 0):

- Images are a ``grid x grid`` board of flat cells: light-gray background,
  dark-gray "sink" cells and a yellow object block. The vision tower averages
  each patch's normalised R, G, B (the demo's trick: LayerNorm held linear with
  eps 1e4), so every token of a cell carries the same colour.
- Detectors turn colour into 0/1 flags: the projector's first layer (LLaVA,
  LLaVA-NeXT) or the vision MLP (Gemma 3) fires on dark cells (``SINKF``) and on
  the object colour (``OBJ``). Every token carries ``ONE``; visual tokens
  ``VIS``; BOS and the delimiter their own flags; dense noise (std
  :data:`NOISE_STD`) sits on the unnamed dims only; a bias dim adds
  :data:`BIAS_VALUE` to every token.
- Massive activation: with ``source="mlp"`` the MLP of layer
  ``first_sink_layer - 1`` writes ``MASSIVE * SINK_DIM_SCALE`` into the sink
  dims of flagged tokens; with ``source="projector"`` the projector writes it on
  dark cells and the embeddings carry it on BOS / the delimiter, so sinks exist
  from layer 0. Nothing else writes to the residual stream (attention values
  are 0), so phi is constant from the first sink layer on: about
  ``sqrt(d_model / sum(scale^2))`` (>= 27 at d_model 1024) on sinks and 0
  elsewhere (the noise never touches a sink dim).
- Attention from the first sink layer on: queries read ``ONE``. Sink heads'
  keys read the first sink dim so that 99.5% of each text query's attention
  lands on the sinks. Planted image-centric heads' keys read ``OBJ`` and the
  sink dim so that a text query gives about 75% to the object, 15% to the
  sinks (text and visual) and 10% to everything else. Layers before the first
  sink layer attend uniformly. Rotary embeddings use rope_theta 1e30 and only
  the head dim :data:`QK` (a rotary pair whose frequency is ~1e-15), so
  scores do not depend on position.

Why one file over the usual ~500 lines: the spec, the weight writer of each
family, the images and the per-token truth are one construction whose parts
share the named feature dims above; the truth functions must stay in step with
the weights they describe, which is easiest to check (and to review) with both
in view. Adding a planted model is one entry in :data:`ZOO`; adding a family,
one weight writer and one entry in the builder map.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Bool

from analysis.errors import UserInputError

if TYPE_CHECKING:
    from analysis.tokens import ModelInputs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ----------------------------------------------------------------------------- constants

ONE, VIS, BOS, DELIM, SINKF, OBJ = 8, 9, 10, 11, 12, 13  # named residual features
RESERVED_DIMS = frozenset(range(16))  # named features and a margin: no sink/bias dim here
NOISE_STD = 0.05
MASSIVE = 400.0  # |x| written into the first sink dim
SINK_DIM_SCALE = (1.0, 0.5, 0.25)  # relative magnitudes of the 1st, 2nd, 3rd sink dim
BIAS_VALUE = 5.0  # the decoy bias dim on every token: 100x the median |x|, not a sink
HEAD_DIM = 32
QK = 8  # head dim used by queries and keys (rotary frequency theta^-0.5 ~ 1e-15)
ROPE_THETA = 1e30
D_MLP = 4
VISION_WIDTH = 16
PATCH = 4  # pixels per patch side
TAU = 20.0
GATE_GAIN = 4.0  # MLP detector gain (per unit of normalised flag)
DETECTOR_GAIN = 30.0  # projector / vision detector gain (per unit of normalised colour)
SINK_HEAD_SHARE = 0.995  # attention of a sink head's text query on the sinks
IC_SHARES = (0.75, 0.15, 0.10)  # image-centric head: object, sinks, everything else
N_TEXT_ESTIMATE = 12  # text keys seen by a query of the default prompt (for the logits)
DELIMITER = "."
PROMPT = "describe the image ."

BACKGROUND, OBJECT, SINK = 0, 1, 2  # cell classes
SHADES = {BACKGROUND: (200, 200, 200), OBJECT: (230, 230, 40), SINK: (60, 60, 60)}
FAMILIES = (
    "llava",
    "llava_next",
    "gemma3",
    "llava_onevision",
    "idefics3",
    "qwen2_5_vl",
    "qwen3_vl",
)
Source = Literal["mlp", "projector"]
SinksOn = Literal["bos", "visual", "both"]


@dataclass(frozen=True)
class PlantedSpec:
    """What to plant; saved next to the model as its ground truth (``spec.json``).

    ``first_sink_layer`` is the first layer whose *input* carries the sinks: 2 or
    3 with ``source="mlp"`` (the MLP of layer 1 or 2 writes them), 0 with
    ``source="projector"``. ``visual_sink_fraction`` is the fraction of the
    grid's cells that are sinks (at least one cell). ``object_cells`` is the
    object block as half-open ``(row0, row1, col0, col1)``. An empty
    ``sink_dims`` plants no massive activation at all.
    """

    name: str
    family: str = "llava"
    d_model: int = 1024
    n_layers: int = 5
    n_heads: int = 4
    sink_dims: tuple[int, ...] = (337, 771)
    source: Source = "mlp"
    first_sink_layer: int = 2
    visual_sink_fraction: float = 0.1
    sinks_on: SinksOn = "both"
    delimiter_sink: bool = False
    image_centric_heads: tuple[tuple[int, int], ...] = ((2, 1),)
    bias_dim: int | None = None
    grid: int = 6
    object_cells: tuple[int, int, int, int] = (1, 3, 1, 3)
    n_images: int = 2
    seed: int = 0
    notes: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        fail = _Fail(self.name)
        if self.family not in FAMILIES:
            fail(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.d_model < 1024:
            fail(f"d_model must be >= 1024 so phi can reach tau 20, got {self.d_model}")
        if len(self.sink_dims) > len(SINK_DIM_SCALE):
            fail(f"at most {len(SINK_DIM_SCALE)} sink dims, got {len(self.sink_dims)}")
        named = [*self.sink_dims, *([] if self.bias_dim is None else [self.bias_dim])]
        for dim in named:
            if dim in RESERVED_DIMS or not 0 < dim < self.d_model - 1:
                fail(f"dim {dim} must be in [16, {self.d_model - 1}) (0..15 hold features)")
        if len(set(named)) != len(named):
            fail(f"sink and bias dims must differ, got {named}")
        if self.source == "mlp" and self.first_sink_layer not in (2, 3):
            fail("source='mlp' writes at layer 1 or 2: first_sink_layer must be 2 or 3")
        if self.source == "projector" and self.first_sink_layer != 0:
            fail("source='projector' puts sinks in the embeddings: first_sink_layer must be 0")
        if self.first_sink_layer >= self.n_layers:
            fail(f"first_sink_layer {self.first_sink_layer} >= n_layers {self.n_layers}")
        if not 0.0 < self.visual_sink_fraction <= 0.8:
            fail(f"visual_sink_fraction must be in (0, 0.8], got {self.visual_sink_fraction}")
        for layer, head in self.image_centric_heads:
            if not (self.first_sink_layer <= layer < self.n_layers and 0 <= head < self.n_heads):
                fail(
                    f"image-centric head ({layer}, {head}) must be at or after the first sink layer"
                )
        r0, r1, c0, c1 = self.object_cells
        if not (0 <= r0 < r1 <= self.grid and 0 <= c0 < c1 <= self.grid):
            fail(f"object_cells {self.object_cells} must lie on the {self.grid}x{self.grid} grid")
        if self.n_visual_sinks > self.grid**2 - (r1 - r0) * (c1 - c0):
            fail("more sink cells than free cells")

    # ------------------------------------------------------------------ derived truth
    @property
    def has_sinks(self) -> bool:
        return bool(self.sink_dims)

    @property
    def bos_sink(self) -> bool:
        return self.has_sinks and self.sinks_on in ("bos", "both")

    @property
    def visual_sinks(self) -> bool:
        return self.has_sinks and self.sinks_on in ("visual", "both")

    @property
    def n_visual_sinks(self) -> int:
        """Sink cells per image."""
        return max(1, round(self.visual_sink_fraction * self.grid**2))

    @property
    def sink_layers(self) -> list[int]:
        return list(range(self.first_sink_layer, self.n_layers)) if self.has_sinks else []

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlantedSpec:
        data = dict(data)
        data["sink_dims"] = tuple(data["sink_dims"])
        data["object_cells"] = tuple(data["object_cells"])
        data["image_centric_heads"] = tuple(tuple(h) for h in data["image_centric_heads"])
        return cls(**data)


@dataclass
class _Fail:
    name: str

    def __call__(self, message: str) -> None:
        raise UserInputError(f"PlantedSpec {self.name!r}: {message}.")


# ----------------------------------------------------------------------------- the zoo

ZOO: tuple[PlantedSpec, ...] = (
    PlantedSpec("llava_base", notes="the demo's recipe: MLP at layer 1, 10% sinks"),
    PlantedSpec(
        "llava_heavy_projector",
        d_model=2048,
        sink_dims=(1415, 1900),
        source="projector",
        first_sink_layer=0,
        visual_sink_fraction=0.8,
        image_centric_heads=((2, 0), (3, 3)),
        notes="the issue's model: projector writes the mass, 80% of the board is sinks",
    ),
    PlantedSpec(
        "llava_one_percent",
        n_layers=6,
        sink_dims=(700,),
        first_sink_layer=3,
        grid=10,
        object_cells=(2, 5, 2, 6),
        visual_sink_fraction=0.01,
        image_centric_heads=((3, 2), (4, 0)),
        notes="one sink dim, MLP at layer 2, one sink cell in 100",
    ),
    PlantedSpec(
        "llava_three_dims",
        d_model=1536,
        sink_dims=(17, 600, 1534),
        visual_sink_fraction=0.3,
        image_centric_heads=((2, 3),),
        notes="three sink dims next to the reserved block and the last dim",
    ),
    PlantedSpec(
        "llava_bos_only",
        sinks_on="bos",
        notes="no visual sink: by the paper's rule no head is image-centric, VAR is a no-op",
    ),
    PlantedSpec("llava_visual_only", sinks_on="visual", visual_sink_fraction=0.2),
    PlantedSpec("llava_delimiter", delimiter_sink=True, visual_sink_fraction=0.15),
    PlantedSpec(
        "llava_bias_decoy",
        bias_dim=512,
        visual_sink_fraction=0.5,
        notes="a bias dim 100x the median on every token must never be reported",
    ),
    PlantedSpec(
        "llava_eight_heads",
        n_layers=4,
        n_heads=8,
        sink_dims=(999,),
        image_centric_heads=((2, 5), (3, 1), (3, 6)),
    ),
    PlantedSpec(
        "llava_no_sinks",
        sink_dims=(),
        bias_dim=640,
        image_centric_heads=(),
        notes="no massive activation; a bias decoy is the closest candidate",
    ),
    PlantedSpec("llava_next_base", family="llava_next", visual_sink_fraction=0.2),
    PlantedSpec(
        "llava_next_heavy_projector",
        family="llava_next",
        d_model=2048,
        sink_dims=(64, 1025),
        source="projector",
        first_sink_layer=0,
        visual_sink_fraction=0.6,
        delimiter_sink=True,
        image_centric_heads=((1, 2), (2, 0)),
    ),
    PlantedSpec("gemma3_base", family="gemma3", visual_sink_fraction=0.25),
    PlantedSpec(
        "llava_onevision_base",
        family="llava_onevision",
        sink_dims=(200, 901),
        visual_sink_fraction=0.2,
        image_centric_heads=((2, 1), (4, 3)),
        notes="Qwen2 text model (q/k/v biases 0), SigLIP tower, anyres grid = the image",
    ),
    PlantedSpec(
        "idefics3_base",
        family="idefics3",
        visual_sink_fraction=0.2,
        image_centric_heads=((2, 1), (3, 2)),
        notes="2 x 2 tiles and a global image: five visual tokens per cell",
    ),
    PlantedSpec(
        "gemma3_late_heavy",
        family="gemma3",
        n_layers=6,
        sink_dims=(100, 900),
        first_sink_layer=3,
        visual_sink_fraction=0.7,
        bias_dim=1000,
        image_centric_heads=((3, 1), (4, 2)),
    ),
    PlantedSpec(
        "qwen2_5_vl_base",
        family="qwen2_5_vl",
        n_heads=32,  # Qwen2.5-VL's head_dim is d_model / n_heads: 32 as every member's
        sink_dims=(300, 850),
        sinks_on="visual",
        delimiter_sink=True,
        visual_sink_fraction=0.2,
        image_centric_heads=((2, 5), (3, 17)),
        notes="no BOS: visual sinks and the delimiter; mRoPE, 2x2 merged cells",
    ),
    PlantedSpec(
        "qwen3_vl_base",
        family="qwen3_vl",
        n_heads=8,  # head_dim is explicit (32): 8 heads of 32 on a 1024-wide stream
        sink_dims=(410, 960),
        sinks_on="visual",
        delimiter_sink=True,
        visual_sink_fraction=0.25,
        image_centric_heads=((2, 3), (4, 6)),
        notes="no BOS; per-head q/k norms (keys as directions), DeepStack adding 0",
    ),
)


def zoo_spec(name: str) -> PlantedSpec:
    for spec in ZOO:
        if spec.name == name:
            return spec
    raise UserInputError(f"No zoo member {name!r}; members: {[s.name for s in ZOO]}.")


# ----------------------------------------------------------------------------- images


def cell_map(spec: PlantedSpec, index: int) -> np.ndarray:
    """The ``grid x grid`` cell classes of image ``index`` (fixed-seed sink cells)."""
    cells = np.full((spec.grid, spec.grid), BACKGROUND, dtype=np.int64)
    r0, r1, c0, c1 = spec.object_cells
    cells[r0:r1, c0:c1] = OBJECT
    free = np.flatnonzero(cells.ravel() == BACKGROUND)
    rng = np.random.default_rng(1000 * spec.seed + index)
    chosen = rng.choice(free, size=spec.n_visual_sinks, replace=False)
    cells.ravel()[chosen] = SINK
    return cells


def cell_pixels(spec: PlantedSpec) -> int:
    """Pixels per cell side: one patch (LLaVA), one pooled token (Gemma 3, 2x2 patches), one
    merged token (Qwen2.5-VL / Qwen3-VL, 2x2 patches) or one Idefics3 global-image token (2x2 tile
    tokens of 2x2 patches each)."""
    return PATCH * {"gemma3": 2, "qwen2_5_vl": 2, "qwen3_vl": 2, "idefics3": 4}.get(spec.family, 1)


def visual_copies(spec: PlantedSpec) -> int:
    """Visual tokens of one cell: LLaVA-NeXT's / OneVision's base and hi-res grid, Idefics3's four tile
    tokens and one global token, else one."""
    return {"llava_next": 2, "llava_onevision": 2, "idefics3": 5}.get(spec.family, 1)


def image_size(spec: PlantedSpec) -> int:
    return spec.grid * cell_pixels(spec)


def render(spec: PlantedSpec, cells: np.ndarray) -> np.ndarray:
    size = cell_pixels(spec)
    shades = np.array([SHADES[k] for k in (BACKGROUND, OBJECT, SINK)], dtype=np.uint8)
    return np.kron(shades[cells], np.ones((size, size, 1), dtype=np.uint8)).astype(np.uint8)


def _unit_rgb(shade: tuple[int, int, int]) -> np.ndarray:
    """Pixel values after the processors' normalisation (mean 0.5, std 0.5)."""
    return (np.asarray(shade, dtype=np.float64) / 255.0 - 0.5) / 0.5


# Detectors on normalised colour u = (r, g, b): w . u + b > 0 on one class only.
DARK_W, DARK_B = -np.ones(3) / 3, -0.2  # dark gray: the sink cells
YELLOW_W, YELLOW_B = np.array([0.5, 0.5, -1.0]), -0.8  # the object colour


def _dark(u: np.ndarray) -> float:
    return float(DARK_W @ u + DARK_B)


def _yellow(u: np.ndarray) -> float:
    return float(YELLOW_W @ u + YELLOW_B)


# ----------------------------------------------------------------------------- ground truth


def load_spec(path: str | os.PathLike[str]) -> tuple[PlantedSpec, list[np.ndarray]]:
    """The spec and cell maps saved by :func:`build_planted` (``path`` is its folder)."""
    data = json.loads((Path(path) / "spec.json").read_text())
    return PlantedSpec.from_json(data["spec"]), [np.asarray(c) for c in data["cells"]]


def image_paths(path: str | os.PathLike[str]) -> list[Path]:
    return sorted((Path(path) / "images").glob("planted_*.png"))


def _cell_classes(inputs: ModelInputs, cells: list[np.ndarray], images: list[int]) -> torch.Tensor:
    """Per sample and position: the cell class of visual tokens, -1 elsewhere."""
    out = torch.full(inputs.input_ids.shape, -1, dtype=torch.long)
    for b, layout in enumerate(inputs.layouts):
        g = layout.geometry
        board = torch.as_tensor(cells[images[b]])
        keep = ~g.separator
        # A grid finer than the board (Idefics3's stitched tiles) maps several tokens to a cell.
        shape = {(grid.image, grid.tile): (grid.rows, grid.cols) for grid in g.grids}
        sizes = torch.tensor([shape[int(i), int(t)] for i, t in zip(g.image, g.tile, strict=True)])
        row = g.row * board.shape[0] // sizes[:, 0].reshape(-1)
        col = g.col * board.shape[1] // sizes[:, 1].reshape(-1)
        out[b, g.positions[keep]] = board[row[keep], col[keep]]
    return out


def sink_truth(
    spec: PlantedSpec,
    cells: list[np.ndarray],
    inputs: ModelInputs,
    images: list[int] | None = None,
) -> Bool[torch.Tensor, "batch layer pos"]:
    """Planted sink tokens at every layer input: BOS / delimiter / dark cells from the first
    sink layer on, nothing before. ``images[b]`` is the image index of sample ``b``."""
    images = list(range(inputs.batch_size)) if images is None else images
    batch, n_pos = inputs.input_ids.shape
    per_pos = torch.zeros(batch, n_pos, dtype=torch.bool)
    if spec.visual_sinks:
        per_pos |= _cell_classes(inputs, cells, images) == SINK
    for b, layout in enumerate(inputs.layouts):
        if spec.bos_sink and layout.bos_position is not None:
            per_pos[b, layout.bos_position] = True
        if spec.delimiter_sink:
            for p, token in enumerate(layout.tokens):
                if token == DELIMITER and bool(layout.attention_mask[p]):
                    per_pos[b, p] = True
    truth = torch.zeros(batch, spec.n_layers, n_pos, dtype=torch.bool)
    truth[:, spec.sink_layers] = per_pos[:, None, :]
    return truth


def object_truth(
    spec: PlantedSpec, cells: list[np.ndarray], inputs: ModelInputs, images: list[int] | None = None
) -> Bool[torch.Tensor, "batch pos"]:
    """Visual tokens of the object block."""
    images = list(range(inputs.batch_size)) if images is None else images
    return _cell_classes(inputs, cells, images) == OBJECT


# ----------------------------------------------------------------------------- magnitudes


@dataclass(frozen=True)
class _Plan:
    """Magnitudes derived from a spec: massive vector, norms, attention logits."""

    spec: PlantedSpec
    massive: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.spec.sink_dims)
        object.__setattr__(self, "massive", MASSIVE * np.asarray(SINK_DIM_SCALE[:k]))

    @property
    def n_free(self) -> int:
        return self.spec.d_model - len(RESERVED_DIMS) - len(self.spec.sink_dims) - 1

    def rms(self, n_flags: int, massive: bool) -> float:
        """Expected RMS of a token with ``n_flags`` unit features (ONE included)."""
        square = n_flags + self.n_free * NOISE_STD**2
        if self.spec.bias_dim is not None:
            square += BIAS_VALUE**2
        if massive:
            square += float((self.massive**2).sum())
        return math.sqrt(square / self.spec.d_model)

    def counts(self) -> dict[str, float]:
        """Keys a text query sees: visual tokens by class, text tokens, sinks."""
        s = self.spec
        anyres = s.family in ("llava_next", "llava_onevision")  # base + hi-res grid, newlines
        tiles = visual_copies(s)
        r0, r1, c0, c1 = s.object_cells
        n_obj = tiles * (r1 - r0) * (c1 - c0)
        n_vs = tiles * s.n_visual_sinks if s.visual_sinks else 0
        n_vis = tiles * s.grid**2 + (s.grid if anyres else 0)
        n_text_sinks = int(s.bos_sink) + int(s.delimiter_sink and s.has_sinks)
        n_sinks = n_vs + n_text_sinks
        markup = 0
        if s.family == "idefics3":  # the tile markers and global-image tags are text keys
            from analysis.testing.planted_idefics3 import MARKUP_TOKENS

            markup = MARKUP_TOKENS
        n_rest = n_vis - n_obj - n_vs + N_TEXT_ESTIMATE + markup - n_text_sinks
        return {"obj": n_obj, "sinks": max(n_sinks, 1), "rest": n_rest}

    def one_norm_query(self) -> float:
        return 1.0 / self.rms(1, massive=False)

    def sink_norm(self) -> float:
        """x[sink_dims[0]] / RMS(x) on a sink token (~phi)."""
        return float(self.massive[0]) / self.rms(3, massive=True)

    def obj_norm(self) -> float:
        return 1.0 / self.rms(3, massive=False)

    def logits(self) -> dict[str, float]:
        c = self.counts()
        sink = math.log(
            SINK_HEAD_SHARE / (1 - SINK_HEAD_SHARE) * (c["obj"] + c["rest"]) / c["sinks"]
        )
        share_obj, share_sink, share_rest = IC_SHARES
        return {
            "sink_head": sink,
            "ic_object": math.log(share_obj / share_rest * c["rest"] / c["obj"]),
            "ic_sink": math.log(share_sink / share_rest * c["rest"] / c["sinks"]),
        }


# ----------------------------------------------------------------------------- weights


def _put(sd: dict[str, torch.Tensor], suffix: str, value: Any) -> None:
    """Set the one state-dict entry whose name ends with ``suffix``."""
    names = [n for n in sd if n == suffix or n.endswith("." + suffix)]
    if len(names) != 1:
        raise KeyError(f"{suffix!r} matches {names} in the state dict")
    target = sd[names[0]]
    sd[names[0]] = torch.as_tensor(np.asarray(value), dtype=target.dtype).reshape(target.shape)


def _noise_vector(rng: np.random.Generator, plan: _Plan, n: int | None = None) -> np.ndarray:
    """Dense noise on the free dims (0 on named, sink and bias dims)."""
    spec = plan.spec
    shape = (spec.d_model,) if n is None else (n, spec.d_model)
    noise = rng.standard_normal(shape) * NOISE_STD
    named = sorted(RESERVED_DIMS | set(spec.sink_dims))
    if spec.bias_dim is not None:
        named.append(spec.bias_dim)
    noise[..., named] = 0.0
    return noise


def _text_embeddings(
    plan: _Plan, rng: np.random.Generator, tokenizer: Any, scale: float = 1.0
) -> np.ndarray:
    spec = plan.spec
    vocab = len(tokenizer)
    emb = _noise_vector(rng, plan, vocab)
    emb[:, ONE] = 1.0
    if spec.bias_dim is not None:
        emb[:, spec.bias_dim] = BIAS_VALUE
    bos = tokenizer.bos_token_id
    delim = tokenizer.convert_tokens_to_ids(DELIMITER)
    emb[bos, BOS] = 1.0
    emb[delim, DELIM] = 1.0
    if spec.source == "projector":  # sinks already in the embeddings
        if spec.bos_sink:
            emb[bos, list(spec.sink_dims)] = plan.massive
        if spec.delimiter_sink and spec.has_sinks:
            emb[delim, list(spec.sink_dims)] = plan.massive
    return emb / scale


def _visual_base(plan: _Plan, rng: np.random.Generator) -> np.ndarray:
    """What every visual token carries besides its flags: ONE, VIS, bias, noise."""
    base = _noise_vector(rng, plan)
    base[ONE] = base[VIS] = 1.0
    if plan.spec.bias_dim is not None:
        base[plan.spec.bias_dim] = BIAS_VALUE
    return base


def _attention(plan: _Plan, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """q and k weights [head, head_dim, d_model] of one layer (values / outputs stay 0)."""
    spec = plan.spec
    q = np.zeros((spec.n_heads, HEAD_DIM, spec.d_model))
    k = np.zeros_like(q)
    if not spec.has_sinks or layer < spec.first_sink_layer:
        return q, k  # uniform attention
    logits = plan.logits()
    root = math.sqrt(HEAD_DIM)
    s0 = spec.sink_dims[0]
    for head in range(spec.n_heads):
        q[head, QK, ONE] = 1.0 / plan.one_norm_query()  # q = 1 on ordinary text queries
        if (layer, head) in spec.image_centric_heads:
            k[head, QK, OBJ] = logits["ic_object"] * root / plan.obj_norm()
            k[head, QK, s0] = logits["ic_sink"] * root / plan.sink_norm()
        else:
            k[head, QK, s0] = logits["sink_head"] * root / plan.sink_norm()
    return q, k


def _sink_mlp(plan: _Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gate, up [d_mlp, d_model] and down [d_model, d_mlp] of the layer writing the mass."""
    spec = plan.spec
    gate = np.zeros((D_MLP, spec.d_model))
    up = np.zeros_like(gate)
    down = np.zeros((spec.d_model, D_MLP))
    flags = []
    if spec.visual_sinks:
        flags.append((SINKF, 3))  # visual sink tokens carry ONE, VIS, SINKF
    if spec.bos_sink:
        flags.append((BOS, 2))
    if spec.delimiter_sink and spec.has_sinks:
        flags.append((DELIM, 2))
    for neuron, (flag, n_flags) in enumerate(flags):
        norm = 1.0 / plan.rms(n_flags, massive=False)
        gate[neuron, flag] = GATE_GAIN
        gate[neuron, ONE] = -GATE_GAIN / 2
        up[neuron, ONE] = 1.0
        pre = GATE_GAIN / 2 * norm  # silu(pre) ~ pre on flagged tokens, 0 elsewhere
        down[list(spec.sink_dims), neuron] = plan.massive / (pre * norm)
    return gate, up, down


# ----------------------------------------------------------------------------- LLaVA / NeXT


def _llama_text(plan: _Plan, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    spec = plan.spec
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.d_model,
        intermediate_size=D_MLP,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _clip_vision(spec: PlantedSpec) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=VISION_WIDTH,
        projection_dim=VISION_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=1,
        image_size=image_size(spec),
        patch_size=PATCH,
        layer_norm_eps=1e4,
    )


def _ln_gain(u: np.ndarray) -> float:
    """CLIP's pre-LayerNorm (weight 100, eps 1e4) on channels (u, -u, 0...): a gain ~1."""
    var = 2 * float((u**2).sum()) / VISION_WIDTH
    return 100.0 / math.sqrt(var + 1e4)


def _llama_weights(
    plan: _Plan,
    sd: dict[str, torch.Tensor],
    tokenizer: Any,
    rng,
    text_prefix: str = "language_model",
) -> None:
    """The LLaMA text model's weights; ``text_prefix`` names its module (Idefics3: text_model)."""
    spec = plan.spec
    for name in list(sd):
        sd[name] = torch.zeros_like(sd[name])
        if name.endswith("norm.weight") and text_prefix in name:
            sd[name] = torch.ones_like(sd[name])
    _put(sd, f"{text_prefix}.embed_tokens.weight", _text_embeddings(plan, rng, tokenizer))
    for layer in range(spec.n_layers):
        prefix = f"{text_prefix}.layers.{layer}."
        q, k = _attention(plan, layer)
        _put(sd, prefix + "self_attn.q_proj.weight", q.reshape(-1, spec.d_model))
        _put(sd, prefix + "self_attn.k_proj.weight", k.reshape(-1, spec.d_model))
        if spec.source == "mlp" and spec.has_sinks and layer == spec.first_sink_layer - 1:
            gate, up, down = _sink_mlp(plan)
            _put(sd, prefix + "mlp.gate_proj.weight", gate)
            _put(sd, prefix + "mlp.up_proj.weight", up)
            _put(sd, prefix + "mlp.down_proj.weight", down)
    head = np.zeros((len(tokenizer), spec.d_model))
    head[tokenizer.eos_token_id, ONE] = 1.0  # answer "</s>": generation stops at once
    _put(sd, "lm_head.weight", head)


def _clip_projector_weights(plan: _Plan, sd: dict[str, torch.Tensor], rng) -> None:
    """Vision tower: patch-mean colour; projector: detectors -> flags (and the mass)."""
    conv = np.zeros((VISION_WIDTH, 3, PATCH, PATCH))
    for c in range(3):
        conv[c, c] = 1.0 / PATCH**2
        conv[3 + c, c] = -1.0 / PATCH**2
    _put(sd, "vision_tower.embeddings.patch_embedding.weight", conv)
    _put(sd, "vision_tower.pre_layrnorm.weight", np.full(VISION_WIDTH, 100.0))
    _put(sd, "vision_tower.post_layernorm.weight", np.full(VISION_WIDTH, 100.0))
    _detector_projector(plan, sd, rng, gain=_ln_gain)


def _detector_projector(
    plan: _Plan,
    sd: dict[str, torch.Tensor],
    rng: np.random.Generator,
    *,
    gain: Callable[[np.ndarray], float] = lambda u: 1.0,
    fc1: str = "multi_modal_projector.linear_1",
    fc2: str = "multi_modal_projector.linear_2",
    width: int = VISION_WIDTH,
    hidden: int | None = None,
) -> None:
    """The two-layer projector of every member: a dark and a yellow detector on the
    patch-mean colour (``fc1``), then the sink / object flags and, with
    ``source="projector"``, the massive activation (``fc2``). ``gain`` is what the
    tower's last norm does to a patch of unit colour u (so a detector fires at 1)."""
    spec = plan.spec
    hidden = spec.d_model if hidden is None else hidden
    dark_u, yellow_u = _unit_rgb(SHADES[SINK]), _unit_rgb(SHADES[OBJECT])
    dark_on = DETECTOR_GAIN * _dark(dark_u * gain(dark_u))
    yellow_on = DETECTOR_GAIN * _yellow(yellow_u * gain(yellow_u))
    l1w, l1b = np.zeros((hidden, width)), np.zeros(hidden)
    l1w[0, :3], l1b[0] = DETECTOR_GAIN * DARK_W, DETECTOR_GAIN * DARK_B
    l1w[1, :3], l1b[1] = DETECTOR_GAIN * YELLOW_W, DETECTOR_GAIN * YELLOW_B
    l2w = np.zeros((spec.d_model, hidden))
    l2w[SINKF, 0] = 1.0 / dark_on
    l2w[OBJ, 1] = 1.0 / yellow_on
    if spec.source == "projector" and spec.visual_sinks:
        l2w[list(spec.sink_dims), 0] = plan.massive / dark_on
    _put(sd, f"{fc1}.weight", l1w)
    _put(sd, f"{fc1}.bias", l1b)
    _put(sd, f"{fc2}.weight", l2w)
    _put(sd, f"{fc2}.bias", _visual_base(plan, rng))


def _build_llava(spec: PlantedSpec) -> tuple[Any, Any]:
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    from analysis.tiny import _LLAVA_TEMPLATE, word_tokenizer

    plan = _Plan(spec)
    tok = word_tokenizer({"bos": "<s>", "eos": "</s>", "image_token": "<image>"}, "<s>")
    size = image_size(spec)
    common = {
        "text_config": _llama_text(plan, tok),
        "vision_config": _clip_vision(spec),
        "image_token_id": tok.convert_tokens_to_ids("<image>"),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
    }
    norm: dict[str, Any] = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    crop = {"shortest_edge": size}, {"height": size, "width": size}
    # One builder for both LLaVA classes: typed loosely on purpose.
    config: Any
    model: Any
    images: Any
    if spec.family == "llava":
        config = LlavaConfig(**common)
        model = LlavaForConditionalGeneration(config)
        images = CLIPImageProcessor(size=crop[0], crop_size=crop[1], **norm)
        processor_cls: Any = LlavaProcessor
    else:
        pinpoints = [[size, size]]  # one hi-res tile = the image itself: no resampling
        config = LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        model = LlavaNextForConditionalGeneration(config)
        images = LlavaNextImageProcessor(
            size=crop[0], crop_size=crop[1], image_grid_pinpoints=pinpoints, **norm
        )
        processor_cls = LlavaNextProcessor
    rng = np.random.default_rng(spec.seed)
    sd = dict(model.state_dict())
    _llama_weights(plan, sd, tok, rng)
    _clip_projector_weights(plan, sd, rng)
    if spec.family == "llava_next":
        newline = _visual_base(plan, rng)
        _put(sd, "image_newline", newline)
    model.load_state_dict(sd, strict=True)
    processor = processor_cls(
        image_processor=images,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model.eval(), processor


# ----------------------------------------------------------------------------- Gemma 3


CONST_K = 9  # Gemma 3: second key dim, so that normalised keys keep a direction


def _gemma_attention(plan: _Plan, layer: int) -> tuple[np.ndarray, np.ndarray, float]:
    """q, k [head, head_dim, d_model] and the q_norm gain of one Gemma 3 layer.

    Gemma 3 RMS-normalises every head's query and key, so a score is
    ``gain * sqrt(head_dim) * cos``: the query is one unit direction, each key
    a direction in the plane (QK, CONST_K) whose QK share sets the logit.
    """
    spec = plan.spec
    q = np.zeros((spec.n_heads, HEAD_DIM, spec.d_model))
    k = np.zeros_like(q)
    if not spec.has_sinks or layer < spec.first_sink_layer:
        return q, k, 1.0
    logits = plan.logits()
    top = 1.25 * max(abs(v) for v in logits.values())
    s0 = spec.sink_dims[0]

    def direction(logit: float) -> tuple[float, float]:
        f = logit / top
        return f, math.sqrt(1 - f * f)

    for head in range(spec.n_heads):
        q[head, QK, ONE] = 1.0
        k[head, CONST_K, ONE] = 1.0
        if (layer, head) in spec.image_centric_heads:
            f, c = direction(logits["ic_object"])
            k[head, QK, OBJ] = f / c  # with CONST_K = 1 on the same token
            k[head, QK, s0], k[head, CONST_K, s0] = direction(logits["ic_sink"])
        else:
            k[head, QK, s0], k[head, CONST_K, s0] = direction(logits["sink_head"])
    return q, k, top / math.sqrt(HEAD_DIM)


def _build_gemma3(spec: PlantedSpec) -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    from analysis.tiny import _GEMMA3_TEMPLATE, gemma3_tokenizer

    plan = _Plan(spec)
    tok = gemma3_tokenizer()
    size = image_size(spec)
    text = {
        "vocab_size": len(tok),
        "hidden_size": spec.d_model,
        "intermediate_size": D_MLP,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_heads,
        "head_dim": HEAD_DIM,
        "query_pre_attn_scalar": HEAD_DIM,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "sliding_window": 4096,
        "layer_types": ["full_attention"] * spec.n_layers,
        "rope_parameters": {
            kind: {"rope_type": "default", "rope_theta": ROPE_THETA}
            for kind in ("sliding_attention", "full_attention")
        },
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {
        "hidden_size": VISION_WIDTH,
        "intermediate_size": VISION_WIDTH,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": size,
        "patch_size": PATCH,
        "layer_norm_eps": 1e4,  # every vision norm (and the projector's) stays linear
    }
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=spec.grid**2,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(config)
    rng = np.random.default_rng(spec.seed)
    sd = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    # Vision: channels (u, -u) = patch-mean colour, (1, -1) = constant from the conv bias;
    # the MLP adds (dark, -dark, yellow, -yellow). Every channel set sums to 0, so the
    # LayerNorms (weight 100, eps 1e4) are ~identity.
    conv = np.zeros((VISION_WIDTH, 3, PATCH, PATCH))
    for c in range(3):
        conv[c, c] = 1.0 / PATCH**2
        conv[3 + c, c] = -1.0 / PATCH**2
    conv_bias = np.zeros(VISION_WIDTH)
    conv_bias[10], conv_bias[11] = 1.0, -1.0
    _put(sd, "embeddings.patch_embedding.weight", conv)
    _put(sd, "embeddings.patch_embedding.bias", conv_bias)
    for norm in ("layer_norm1", "layer_norm2"):
        _put(sd, f"encoder.layers.0.{norm}.weight", np.full(VISION_WIDTH, 100.0))
    _put(sd, "post_layernorm.weight", np.full(VISION_WIDTH, 100.0))
    fc1 = np.zeros((VISION_WIDTH, VISION_WIDTH))
    fc1_b = np.zeros(VISION_WIDTH)
    fc1[0, :3], fc1_b[0] = DETECTOR_GAIN * DARK_W, DETECTOR_GAIN * DARK_B
    fc1[1, :3], fc1_b[1] = DETECTOR_GAIN * YELLOW_W, DETECTOR_GAIN * YELLOW_B
    dark_u, yellow_u = _unit_rgb(SHADES[SINK]), _unit_rgb(SHADES[OBJECT])
    dark_on, yellow_on = DETECTOR_GAIN * _dark(dark_u), DETECTOR_GAIN * _yellow(yellow_u)
    fc2 = np.zeros((VISION_WIDTH, VISION_WIDTH))
    fc2[6, 0], fc2[7, 0] = 1.0 / dark_on, -1.0 / dark_on
    fc2[8, 1], fc2[9, 1] = 1.0 / yellow_on, -1.0 / yellow_on
    _put(sd, "encoder.layers.0.mlp.fc1.weight", fc1)
    _put(sd, "encoder.layers.0.mlp.fc1.bias", fc1_b)
    _put(sd, "encoder.layers.0.mlp.fc2.weight", fc2)
    # Projector: RMSNorm with eps 1e4 divides by ~100; weight 99 gives (1 + 99) back.
    _put(sd, "mm_soft_emb_norm.weight", np.full(VISION_WIDTH, 99.0))
    proj = np.zeros((VISION_WIDTH, spec.d_model))
    proj[10] = _visual_base(plan, rng)
    proj[6, SINKF] = 1.0
    proj[8, OBJ] = 1.0
    if spec.source == "projector" and spec.visual_sinks:
        proj[6, list(spec.sink_dims)] = plan.massive
    _put(sd, "mm_input_projection_weight", proj)
    # Text model: Gemma norms scale by (1 + weight), so the zeros above are identities.
    embed = _text_embeddings(plan, rng, tok, scale=math.sqrt(spec.d_model))
    _put(sd, "language_model.embed_tokens.weight", embed)
    _put(sd, "lm_head.weight", embed)  # tied to the embeddings: the last one loaded wins
    for layer in range(spec.n_layers):
        prefix = f"language_model.layers.{layer}."
        q, k, gain = _gemma_attention(plan, layer)
        _put(sd, prefix + "self_attn.q_proj.weight", q.reshape(-1, spec.d_model))
        _put(sd, prefix + "self_attn.k_proj.weight", k.reshape(-1, spec.d_model))
        _put(sd, prefix + "self_attn.q_norm.weight", np.full(HEAD_DIM, gain - 1.0))
        if spec.source == "mlp" and spec.has_sinks and layer == spec.first_sink_layer - 1:
            gate, up, down = _sink_mlp(plan)
            _put(sd, prefix + "mlp.gate_proj.weight", gate)
            _put(sd, prefix + "mlp.up_proj.weight", up)
            _put(sd, prefix + "mlp.down_proj.weight", down)
            # The output norm rescales the MLP's output to unit RMS: give the mass back.
            post = np.full(spec.d_model, -1.0)
            post[list(spec.sink_dims)] = np.linalg.norm(plan.massive) / math.sqrt(spec.d_model)
            post[list(spec.sink_dims)] -= 1.0
            _put(sd, prefix + "post_feedforward_layernorm.weight", post)
    model.load_state_dict(sd, strict=True)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(
            size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tok,
        chat_template=_GEMMA3_TEMPLATE,
        image_seq_length=spec.grid**2,
    )
    return model.eval(), processor


def _build_onevision(spec: PlantedSpec) -> tuple[Any, Any]:
    from analysis.testing.planted_onevision import build_onevision

    return build_onevision(spec)


def _build_idefics3(spec: PlantedSpec) -> tuple[Any, Any]:
    from analysis.testing.planted_idefics3 import build_idefics3

    return build_idefics3(spec)


def _build_qwen2_5_vl(spec: PlantedSpec) -> tuple[Any, Any]:
    from analysis.testing.planted_qwen import build_qwen2_5_vl

    return build_qwen2_5_vl(spec)


def _build_qwen3_vl(spec: PlantedSpec) -> tuple[Any, Any]:
    from analysis.testing.planted_qwen import build_qwen3_vl

    return build_qwen3_vl(spec)


_BUILDERS = {
    "llava": _build_llava,
    "llava_next": _build_llava,
    "gemma3": _build_gemma3,
    "llava_onevision": _build_onevision,
    "idefics3": _build_idefics3,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "qwen3_vl": _build_qwen3_vl,
}


# ----------------------------------------------------------------------------- writing


def default_root() -> Path:
    return Path(tempfile.gettempdir()) / "vsink-planted"


def build_planted(spec: PlantedSpec, out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``spec``'s model, images and ground truth to ``out`` and return ``out``.

    Deterministic: the same spec writes the same weights and images. ``out``
    defaults to ``<tmp>/vsink-planted/<spec.name>``.
    """
    from PIL import Image

    folder = Path(out) if out is not None else default_root() / spec.name
    model, processor = _BUILDERS[spec.family](spec)
    (folder / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    (folder / "images").mkdir(exist_ok=True)
    cells = [cell_map(spec, index) for index in range(spec.n_images)]
    for index, board in enumerate(cells):
        Image.fromarray(render(spec, board)).save(folder / "images" / f"planted_{index:02d}.png")
    truth = {
        "synthetic": True,
        "spec": spec.to_json(),
        "cells": [board.tolist() for board in cells],
        "cell_classes": {"background": BACKGROUND, "object": OBJECT, "sink": SINK},
        "sink_layers": spec.sink_layers,
        "tau": TAU,
        "prompt": PROMPT,
        "delimiter": DELIMITER,
    }
    (folder / "spec.json").write_text(json.dumps(truth, indent=1) + "\n")
    return folder
