"""Compatibility with the transformers / TransformerLens releases the toolkit supports.

transformers 5.24 renamed the argument through which decoder layers hand the KV
cache to attention from ``past_key_values=`` to ``cache=``. TransformerLens 4.3's
attention bridges compute attention themselves and read only ``past_key_values``
(or ``layer_past``), so under 5.24 the cache is never filled: every decoding step
attends only to itself and greedy generation is silently wrong. Nothing raises.

Two defences, both installed by :func:`analysis.loading.load_model`:

* :func:`install_cache_compat` puts a forward pre-hook on every attention bridge
  that hands ``cache`` on as ``past_key_values`` when only the new name is given.
  Under transformers < 5.24 the argument is never called ``cache``, and a
  TransformerLens that reads ``cache`` itself sees ``past_key_values`` already
  set by nobody else: the hook is a no-op in both cases.
* :func:`check_cache_filled` runs after every cached generation and raises
  :class:`CacheError` naming the installed versions when the cache holds fewer
  positions than were fed, so a future rename cannot be silent either.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import torch

from analysis.errors import VsinkError

# The versions `make test` runs under (requirements.lock and make test-alt).
TESTED_TRANSFORMERS = ("5.23.0", "5.24.0")
TESTED_TRANSFORMER_LENS = ("4.3.0",)


class CacheError(VsinkError, RuntimeError):
    """A cached generation's KV cache does not hold the positions it was fed."""


def installed_versions() -> dict[str, str]:
    """Installed versions of the packages whose interplay decides cache handling."""
    out = {}
    for name in ("torch", "transformers", "transformer-lens"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe_versions() -> str:
    return ", ".join(f"{name} {version}" for name, version in installed_versions().items())


def _hand_cache_on(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
    return args, kwargs


def install_cache_compat(bridge: torch.nn.Module) -> int:
    """Pre-hook every TransformerLens attention bridge in ``bridge``; returns how many.

    Idempotent; :func:`remove_cache_compat` takes the hooks off again (tests use it
    to show what happens without them).
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    count = 0
    for module in bridge.modules():
        # A bridge whose forward delegates to the HF module (Qwen-VL's mRoPE attention) hands
        # its kwargs on as they are, and the HF module reads `cache` itself.
        if (
            isinstance(module, AttentionBridge)
            and type(module).forward is not AttentionBridge.forward
        ):
            if getattr(module, _HANDLE, None) is None:
                handle = module.register_forward_pre_hook(_hand_cache_on, with_kwargs=True)
                setattr(module, _HANDLE, handle)
            count += 1
    return count


def remove_cache_compat(bridge: torch.nn.Module) -> int:
    """Undo :func:`install_cache_compat`; returns how many hooks were removed."""
    count = 0
    for module in bridge.modules():
        handle = getattr(module, _HANDLE, None)
        if handle is not None:
            handle.remove()
            setattr(module, _HANDLE, None)
            count += 1
    return count


_HANDLE = "_vsink_cache_compat_handle"


def generated_cache(output: Any) -> Any:
    """The KV cache a ``generate(..., return_dict_in_generate=True)`` output carries."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def check_cache_filled(output: Any) -> None:
    """Raise :class:`CacheError` unless the cache holds every position fed to the model.

    ``generate`` feeds the prompt and every generated token but the last, so a
    working cache holds ``sequences.shape[1] - 1`` positions.
    """
    expected = int(output.sequences.shape[1]) - 1
    cache = generated_cache(output)
    held = None if cache is None else int(cache.get_seq_length())
    if held != expected:
        raise CacheError(
            f"KV-cache generation is broken in this environment: the cache holds "
            f"{held} positions after {expected} were fed, so decoding would ignore "
            f"the prompt ({describe_versions()}). Tested: transformers "
            f"{' / '.join(TESTED_TRANSFORMERS)} with transformer-lens "
            f"{' / '.join(TESTED_TRANSFORMER_LENS)}; install those (make test uses "
            "requirements.lock)."
        )
