"""Images in: read a path, PIL image or array as RGB, with one clear error per bad input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from analysis.errors import UserInputError

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor


class ImageError(UserInputError):
    """An image could not be read or is unusable; the message says which and why."""


def load_image(image: ImageLike) -> Image.Image:
    """Read an image from a path, PIL image or array and return it as RGB.

    Grayscale, palette, 16-bit and RGBA images are converted (alpha is
    composited on white, as a viewer would show it). Missing, corrupt,
    zero-size, animated and oversized (decompression-bomb) images, and folders,
    raise :class:`ImageError`.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image).expanduser()
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image file.")
        if not path.is_file():
            raise ImageError(f"Image file not found: {path}")
        try:
            with Image.open(path) as opened:
                frames = getattr(opened, "n_frames", 1)
                if frames > 1:
                    raise ImageError(
                        f"{path} is animated ({frames} frames); pass a single still image."
                    )
                opened.load()
                pil = opened.copy()
        except Image.DecompressionBombError as err:
            raise ImageError(
                f"{path} is too large to decode safely ({err}); downscale it first."
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageError(f"Cannot decode image {path}: {err}") from None
        return _to_rgb(pil, str(path))
    if isinstance(image, Image.Image):
        return _to_rgb(image, "PIL image")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _to_rgb(_array_to_pil(image), "array")
    raise ImageError(f"Unsupported image type {type(image).__name__}; pass a path, PIL or array.")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first tensors
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"Array image must be HxW, HxWx3 or HxWx4, got shape {array.shape}.")
    if array.size == 0:
        raise ImageError(f"Array image is empty (shape {array.shape}).")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("Array image contains NaN or inf.")
        if array.min() < 0 or array.max() > 1:
            raise ImageError("Float array images must hold values in [0, 1].")
        array = (array * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"Array image dtype must be uint8 or float in [0, 1], got {array.dtype}.")
    return Image.fromarray(array)


def _to_rgb(pil: Image.Image, what: str) -> Image.Image:
    if pil.width == 0 or pil.height == 0:
        raise ImageError(f"{what} has zero size ({pil.width}x{pil.height}).")
    if pil.mode == "RGB":
        return pil
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if pil.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(pil, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        return Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8)).convert("RGB")
    return pil.convert("RGB")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def check_images(paths: list[Path]) -> None:
    """Decode every image once (before a model is loaded): a bad one is found now."""
    for path in dict.fromkeys(paths):
        load_image(path)


def collect_images(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
) -> list[Path]:
    """Image files from files and folders (folders: sorted, by suffix), with clear errors."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise ImageError(f"No such image file or folder: {path}")
    if not found:
        raise ImageError(f"No images found in {', '.join(str(i) for i in items)}.")
    return found
