"""Load a large multimodal model (HF id or local folder) as a TransformerBridge.

One public entry point, :func:`load_model`, returns a :class:`LoadedModel` that
holds the bridge, the HF processor and the metadata every analysis needs. The
supported families live in :mod:`analysis.families` (one module per family, one
registry; :data:`FAMILIES` is a read-only view of it). The family's
``check_config`` refuses a config it cannot lay out before the processor or any
weight loads.

Numerics are raw HF numerics (the bridge's default): with no hooks attached the
bridge's logits equal HF's eager logits (within fp tolerance: the language model's
attention is routed per call, SDPA where no hook reads the pattern; see
:mod:`analysis.attention`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError

from analysis.attention import install_attention_routing
from analysis.compat import install_cache_compat
from analysis.errors import UserInputError, VsinkError
from analysis.families import Family, UnknownFamilyError, UnsupportedConfigError, registry

log = logging.getLogger(__name__)

try:  # transformers 5 validates config fields through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - another huggingface_hub layout

    class StrictDataclassError(Exception):  # type: ignore[no-redef]
        """Stand-in: nothing raises it."""


# How a family lays visual tokens out (``Family.layout``: grid, anyres, pooled_grid, ...).
Layout = str

# The bundled synthetic demo model (built by ``python -m analysis.demo.build``).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo" / "model"


class ModelLoadError(VsinkError, RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint's architecture is not one of the registered families'."""


class _FamilyView(Mapping[str, Family]):
    """The family registry by name, read live (families registered later show up)."""

    def __getitem__(self, name: str) -> Family:
        return registry.families()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registry.families())

    def __len__(self) -> int:
        return len(registry.families())


FAMILIES: Mapping[str, Family] = _FamilyView()


def supported_architectures() -> list[str]:
    """HF architecture class names that :func:`load_model` accepts."""
    return registry.supported_architectures()


def family_for_architecture(architecture: str) -> Family:
    try:
        return registry.for_architecture(architecture)
    except UnknownFamilyError as err:
        # The registry's message: the supported architectures, or why this one cannot be.
        raise UnsupportedModelError(str(err)) from None


@dataclass
class LoadedModel:
    """A bridged LMM plus the metadata the analyses read.

    Attributes mirror the language model's shape (``n_layers``, ``n_heads``,
    ``d_model``, ``d_head``) because every analysis here is about the LLM's
    residual stream and attention, not the vision tower.
    """

    bridge: Any
    processor: Any
    family: Family
    name_or_path: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    image_token_id: int
    bos_token_id: int | None
    pad_token_id: int | None
    eos_token_ids: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    revision: str | None = None
    is_local: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hf_model(self) -> Any:
        """The wrapped HF model; bridge components sit inside it, so hooks fire in its forward."""
        return self.bridge.original_model

    @property
    def config(self) -> Any:
        return self.hf_model.config

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def architecture(self) -> str:
        return self.config.architectures[0]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary, stored with every result for provenance."""
        return {
            "name_or_path": self.name_or_path,
            "revision": self.revision,
            "family": self.family.name,
            "architecture": self.architecture,
            "base_llm": self.family.base_llm,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "d_head": self.d_head,
            "image_token_id": self.image_token_id,
            "bos_token_id": self.bos_token_id,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }


_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 by default (raw numerics); strings like ``bf16`` or ``float16`` accepted."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise UserInputError(f"Unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}.")
    return _DTYPES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cuda`` when available unless told otherwise; a missing CUDA is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserInputError(
            f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps (as torch names them)."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            f"device={device!r} requested but CUDA is not available on this machine."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(
            f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(
            f"device={device!r} requested but MPS is not available on this machine."
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(
            f"device={device!r} is not supported here; use cpu, cuda, cuda:N or mps."
        )
    return dev


def _is_local(name_or_path: str | os.PathLike[str]) -> bool:
    return Path(name_or_path).expanduser().exists()


class _BelowError(logging.Filter):
    """Drop records below ERROR logged by one thread (the one loading a model)."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.thread != self.thread


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load chatter (weight progress bars, PIL fallback notices).

    transformers' logging verbosity is left as it is: a filter on its handlers
    drops this thread's records below ERROR while the block runs, so another
    thread's (or the caller's) logging is untouched. The weight progress bar has
    only a process-wide switch; it is off inside the block and restored after.
    The logger's level found on entry is put back on exit (see
    :func:`_transformers_level_kept`).
    """
    from transformers.utils import logging as hf_logging

    library = hf_logging.get_logger("transformers")
    hf_logging.get_verbosity()  # configures transformers' default handler if not yet done
    handlers = list(library.handlers)
    if library.propagate:  # CI=1: records also reach the root logger's handlers
        handlers += logging.getLogger().handlers
    only_errors = _BelowError(threading.get_ident())
    for handler in handlers:
        handler.addFilter(only_errors)
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with _transformers_level_kept(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torchvision.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="transformer_lens")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(only_errors)
        if progress:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _transformers_level_kept() -> Iterator[None]:
    """Put the ``transformers`` logger's level back after the block.

    TransformerLens sets it to ERROR for the whole process when its transformers
    source module is first imported; loading a model should not do that.
    """
    library = logging.getLogger("transformers")
    level = library.level
    try:
        yield
    finally:
        library.setLevel(level)


# The name benchmarks import.
_quiet = quiet_transformers


@contextlib.contextmanager
def _processor_handed_over(processor: Any) -> Any:
    """Boot the bridge with the processor already loaded here.

    TransformerLens' ``boot_transformers`` loads the modality processor again
    itself, and when that fails it runs ``pip install torchvision`` (which can
    replace the installed torch with a CUDA build). This hands it our processor
    instead, so the bridge loads nothing and installs nothing; a processor that
    cannot load has already failed above with a clear :class:`ModelLoadError`.
    """
    try:
        from transformer_lens.model_bridge.sources.transformers import helpers, source
    except ImportError:  # another TransformerLens layout: nothing of this kind to neutralise
        yield
        return

    def attach(bridge: Any, *args: Any, **kwargs: Any) -> None:
        bridge.processor = processor

    def refuse_install() -> bool:
        return False

    with contextlib.ExitStack() as stack:
        for module, attr, replacement in (
            (source, "load_modality_processor", attach),
            (helpers, "load_modality_processor", attach),
            (helpers, "_ensure_torchvision", refuse_install),
        ):
            if hasattr(module, attr):
                stack.enter_context(_patched(module, attr, replacement))
        yield


@contextlib.contextmanager
def _patched(module: Any, attr: str, value: Any) -> Any:
    previous = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, previous)


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    allow_unknown_config: bool = False,
) -> LoadedModel:
    """Load an LMM as a TransformerBridge with its processor.

    Args:
        name_or_path: HF hub id (``llava-hf/llava-1.5-7b-hf``) or a local folder
            written by ``save_pretrained``. A local folder never touches the network.
        device: ``cpu``/``cuda``/``cuda:1``; defaults to CUDA when available.
            Mutually exclusive with ``device_map``.
        dtype: model dtype (``float32`` default, ``bfloat16``/``float16`` for big models on GPU).
        device_map: HF/accelerate device map (e.g. ``"auto"``) for models too big for one GPU.
        trust_remote_code: forwarded to HF loaders.
        revision: hub revision (branch, tag or commit) for reproducible loads.
        allow_unknown_config: load a config with top-level keys the family does
            not list (they may change the visual-token layout); the family's value
            checks still run. Without it such a config raises
            :class:`~analysis.families.UnsupportedConfigError` before anything loads.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    with _transformers_level_kept():
        from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise ModelLoadError(
            f"load_model needs an HF hub id or a local model folder, got {name_or_path!r}."
        )
    name = str(name_or_path)
    is_local = _is_local(name)
    if is_local:
        name = str(Path(name).expanduser().resolve())
        if not (Path(name) / "config.json").is_file():
            raise ModelLoadError(
                f"{name} exists but has no config.json: point at a folder written by "
                "`save_pretrained` (model + processor)."
            )
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"No such local model folder: {name}")
    if device_map is not None and device is not None:
        raise UserInputError("Pass either device or device_map, not both.")
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device) if device_map is None else None
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if is_local:
        hub_kwargs["local_files_only"] = True
    elif revision is not None:
        hub_kwargs["revision"] = revision

    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except StrictDataclassError as err:  # a value transformers' own validators refuse
        raise UnsupportedConfigError(
            f"Cannot load {name!r}: transformers refuses a value in its config: "
            + " ".join(str(err).split())
        ) from err
    except (OSError, ValueError) as err:
        hint = (
            "the folder's config.json could not be read"
            if is_local
            else "it is not a local folder and the hub id could not be resolved "
            "(offline, misspelled, gated, or private?)"
        )
        raise ModelLoadError(f"Cannot load {name!r}: {hint}. Cause: {err}") from err
    architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    family = family_for_architecture(architecture)
    family.check_config(config, allow_unknown=allow_unknown_config)

    with quiet_transformers():
        try:
            processor = family.load_processor(name, **hub_kwargs)
        except (OSError, ValueError, ImportError) as err:
            missing = (
                " It needs torchvision, which is not installed; vsink never installs "
                "packages: install a torchvision build that matches your torch yourself."
                if "torchvision" in str(err).lower()
                else ""
            )
            raise ModelLoadError(
                f"Cannot load the processor of {name!r} (image processor + tokenizer "
                f"+ chat template are all needed).{missing} Cause: {err}"
            ) from err
        model_kwargs = dict(hub_kwargs, dtype=torch_dtype, attn_implementation="eager")
        if device_map is not None:
            model_kwargs["device_map"] = device_map
        try:
            hf_model = AutoModelForImageTextToText.from_pretrained(name, **model_kwargs)
        except (OSError, ValueError, SafetensorError) as err:
            raise ModelLoadError(
                f"Cannot load the weights of {name!r} (a truncated or corrupt weight file?). "
                f"Cause: {err}"
            ) from err
        hf_model.eval()
        if device_map is None:
            # transformers types .to() through a decorator that mypy reads wrongly.
            cast(Any, hf_model).to(torch_device)
        with _processor_handed_over(processor), family.boot_context():
            bridge = TransformerBridge.boot_transformers(
                name,
                hf_model=hf_model,
                tokenizer=processor.tokenizer,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
            )
    bridge.eval()
    bridge.processor = processor
    install_cache_compat(bridge)
    install_attention_routing(bridge)
    family.prepare_bridge(bridge)
    return _describe_loaded(bridge, processor, family, name, revision, is_local, torch_dtype)


def _describe_loaded(
    bridge: Any,
    processor: Any,
    family: Family,
    name: str,
    revision: str | None,
    is_local: bool,
    dtype: torch.dtype,
) -> LoadedModel:
    config = bridge.original_model.config
    text_config = config.get_text_config()
    tokenizer = processor.tokenizer
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    if image_token_id is None:
        raise ModelLoadError(f"{name}: the config names no image token id (image_token_id).")
    n_heads = int(text_config.num_attention_heads)
    d_model = int(text_config.hidden_size)
    eos = getattr(text_config, "eos_token_id", None) or tokenizer.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
    return LoadedModel(
        bridge=bridge,
        processor=processor,
        family=family,
        name_or_path=name,
        n_layers=int(text_config.num_hidden_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(text_config, "num_key_value_heads", None) or n_heads),
        d_model=d_model,
        d_head=int(getattr(text_config, "head_dim", None) or d_model // n_heads),
        image_token_id=int(image_token_id),
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_ids=tuple(int(e) for e in eos_ids),
        dtype=dtype,
        device=next(bridge.original_model.parameters()).device,
        revision=revision,
        is_local=is_local,
    )
