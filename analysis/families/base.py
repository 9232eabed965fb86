"""What the toolkit needs to know about one LMM family, as one class per family.

A family module (``analysis/families/<name>.py``) subclasses :class:`Family`,
fills in the class attributes and the two abstract methods, and registers
itself with :func:`analysis.families.registry.register`. Nothing else in the
package special-cases a family: loading, token geometry, the processor call,
tiny test models and the attention-edit guard all ask the family object.

Contract tests (``tests/contracts/families.py``) check every registered family
the same way: HF parity, edits take effect, geometry equals the processor's
own token counts, KV-cache generation equals the uncached loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from analysis.errors import VsinkError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from analysis.loading import LoadedModel
    from analysis.tiny import TinySpec
    from analysis.tokens import GridSpec

#: One visual token of one image: (tile, row, col, is_separator); row = col = -1
#: for a token with no place on the grid (a CLS token, a global summary token).
VisualToken = tuple[int, int, int, bool]

# Keys every PretrainedConfig may carry whatever the family (bookkeeping, ids,
# generation defaults); a family lists only the keys specific to it.
COMMON_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "_name_or_path",
        "_attn_implementation_autoset",
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "text_config",
        "vision_config",
        "tie_word_embeddings",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "vocab_size",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "use_cache",
        "is_encoder_decoder",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "tokenizer_class",
        "initializer_range",
    }
)


def grid_tokens(rows: int, cols: int, separator_col: bool = False) -> list[tuple[int, int, bool]]:
    """(row, col, is_separator) of a row-major grid; ``separator_col`` adds one column at the end."""
    width = cols + (1 if separator_col else 0)
    return [(r, c, separator_col and c == cols) for r in range(rows) for c in range(width)]


class UnsupportedConfigError(VsinkError):
    """The checkpoint's config has a key or value the family does not handle."""


@dataclass(frozen=True)
class AttentionEdits:
    """Which attention edits take effect on a family's language model.

    ``pattern``: a hook at ``blocks.{l}.attn.hook_pattern`` that returns a new
    pattern changes the output. ``scores``: ``hook_attn_scores`` receives the
    pre-softmax scores (so pre-softmax knock-outs are right). ``reason`` says
    why when either is false; it ends up in the one-line refusal.
    """

    pattern: bool = True
    scores: bool = True
    reason: str = ""


class Family(ABC):
    """One LMM family. Subclasses set the class attributes and implement the abstract methods.

    Attributes:
        name: registry key (``llava``, ``llava_next``, ...), used on the CLI.
        architectures: HF architecture class names it loads.
        layout: one line on how visual tokens are laid out (README table, ``vsink info``).
        base_llm: the language model family (registry of published sink dims).
        notes: free text for ``vsink info``.
        config_keys: top-level config keys this family understands beyond
            :data:`COMMON_CONFIG_KEYS`; :meth:`check_config` refuses any other.
        attention_edits: what attention edits do on this family (see :class:`AttentionEdits`).
    """

    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    layout: ClassVar[str]
    base_llm: ClassVar[str]
    notes: ClassVar[str] = ""
    config_keys: ClassVar[frozenset[str]] = frozenset()
    attention_edits: ClassVar[AttentionEdits] = AttentionEdits()

    # ------------------------------------------------------------------ config

    def check_config(self, config: Any, *, allow_unknown: bool = False) -> None:
        """Refuse, before any weight loads, a config key or value this family does not handle.

        Keys are the ones the checkpoint sets (``to_diff_dict``: what differs from
        the config class's defaults, every key the config.json adds included).
        ``allow_unknown`` skips the key check; the value checks always run.
        """
        keys = set(config.to_diff_dict()) if hasattr(config, "to_diff_dict") else set()
        unknown = sorted(keys - COMMON_CONFIG_KEYS - self.config_keys)
        if unknown and not allow_unknown:
            raise UnsupportedConfigError(
                f"{self.name}: the config has keys this toolkit does not handle for the family "
                f"({', '.join(unknown)}); they may change the visual-token layout. Check them and "
                "load with allow_unknown_config=True (--allow-unknown-config) to go on anyway."
            )
        self.check_values(config)

    def check_values(self, config: Any) -> None:
        """Refuse values of known keys this family cannot lay out (override where needed)."""
        return

    # ------------------------------------------------------------------ processor

    def load_processor(self, name: str, **hub_kwargs: Any) -> Any:
        """The processor of a checkpoint (tokenizer + image processor + chat template)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name, **hub_kwargs)

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        """How the processor wants a batch's images: flat by default, nested per sample where needed."""
        return [image for sample in images for image in sample]

    # ------------------------------------------------------------------ batches

    #: Processor outputs with one entry per image, not per sample (split by image counts).
    per_image_tensors: ClassVar[frozenset[str]] = frozenset({"pixel_values", "image_sizes"})

    def select_images(
        self, tensors: dict[str, torch.Tensor], sample: int, first: int, count: int
    ) -> dict[str, torch.Tensor]:
        """The per-image tensors of batch row ``sample``, whose images are ``first .. first + count``.

        Override where a tensor is not one entry per image (patches packed per
        image, images nested per sample).
        """
        return {
            key: value[first : first + count]
            for key, value in tensors.items()
            if key in self.per_image_tensors
        }

    # ------------------------------------------------------------------ geometry

    @abstractmethod
    def image_tokens(
        self, model: LoadedModel, image_index: int, size: tuple[int, int]
    ) -> tuple[list[GridSpec], list[VisualToken]]:
        """The grids of one image of original ``size`` (height, width) and its visual tokens in sequence order."""

    def sample_tokens(
        self, model: LoadedModel, sizes: list[tuple[int, int]]
    ) -> list[tuple[list[GridSpec], list[VisualToken]]]:
        """:meth:`image_tokens` of every image of one sample, in prompt order.

        Override where the number of images in a sample changes each image's
        layout (LLaVA-OneVision tiles only a sample's single image).
        """
        return [self.image_tokens(model, index, size) for index, size in enumerate(sizes)]

    # ------------------------------------------------------------------ the bridge

    def prepare_bridge(self, bridge: Any) -> None:
        """Adjust a freshly booted bridge (e.g. route attention so edits take effect)."""
        return

    def output_projection(self, bridge: Any, layer: int) -> Any:
        """The attention output projection (``W_O`` as an nn.Linear) of ``layer``."""
        return bridge.blocks[layer].attn.o.original_component

    # ------------------------------------------------------------------ tests

    @abstractmethod
    def build_tiny(self, spec: TinySpec) -> tuple[Any, Any]:
        """A tiny random (model, processor) of this family, built offline from configs."""
