"""Dataset readers: evaluation items (image + question + optional label).

Three ways in, all returning a list of :class:`Item`:

* :func:`read_pope` reads a JSONL question file in the LLaVA/POPE format
  ``{"question_id", "image", "text", "label"}`` (``id``/``question``/``answer``
  are accepted as aliases) with the images under one root folder;
* :func:`image_folder` makes one item per image of a folder with a fixed prompt;
* :func:`items_from_records` takes any iterable of mappings (the Python API
  for every other format).

The first two, and the benchmark formats, are registered as dataset readers in
:mod:`analysis.scoring.readers`: :func:`analysis.scoring.readers.read_dataset`
reads any of them by format name or by the source file.

Image paths resolve inside the given image root only: a path that escapes it
(``../``, an absolute path elsewhere, a symlink pointing out) is refused with
:class:`DatasetError`, so a question file cannot make a run read arbitrary
files. Every image is checked to exist and to decode before a run starts, not
halfway through it; a NaN/inf or boolean id is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.errors import UserInputError
from analysis.tokens import IMAGE_SUFFIXES, ImageError, load_image

# Accepted spellings of each field, in order of preference (LLaVA/POPE first).
ID_KEYS = ("question_id", "id")
TEXT_KEYS = ("text", "question", "prompt")
LABEL_KEYS = ("label", "answer")
IMAGE_KEYS = ("image",)


class DatasetError(UserInputError):
    """A question file or image folder is unusable; the message says where and why."""


@dataclass(frozen=True)
class Item:
    """One evaluation item.

    ``image_name`` is the path relative to the image root as written in the
    dataset (portable: it is what records and fingerprints store); ``image``
    is the resolved file. ``label`` is lower-cased (``"yes"``/``"no"`` for
    POPE) or None when the dataset has no answers.
    """

    id: str
    image: Path
    image_name: str
    text: str
    label: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image_name, "text": self.text, "label": self.label}


def resolve_image(root: str | os.PathLike[str], name: str | os.PathLike[str]) -> Path:
    """``root / name`` resolved, refused when it leaves ``root`` or is not a file."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise DatasetError(f"Image root {base} is not a folder.")
    # resolve() follows symlinks, so a link inside the root pointing out is caught too.
    path = (base / Path(name).expanduser()).resolve()
    if not path.is_relative_to(base):
        raise DatasetError(
            f"Image path {str(name)!r} resolves to {path}, outside the image root {base}; "
            "image paths must stay inside --images."
        )
    if not path.is_file():
        raise DatasetError(f"Image {str(name)!r} not found under {base}.")
    return path


def _pick(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    return None


def _normalise_label(value: Any) -> str | None:
    if value is None:
        return None
    label = str(value).strip().lower()
    return label or None


def items_from_records(
    records: Iterable[Mapping[str, Any]],
    image_root: str | os.PathLike[str],
    *,
    source: str = "records",
    limit: int | None = None,
) -> list[Item]:
    """Items from mappings with an id, an image path, a question and optionally a label.

    ``source`` names the origin in error messages (a file name, ``row N`` is appended).
    Ids must be unique; they key the per-item records of a run.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}.")
    items: list[Item] = []
    seen: set[str] = set()
    decoded: set[Path] = set()
    for number, row in enumerate(records, start=1):
        where = f"{source} row {number}"
        if not isinstance(row, Mapping):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}.")
        raw_id, image, text = _pick(row, ID_KEYS), _pick(row, IMAGE_KEYS), _pick(row, TEXT_KEYS)
        for value, keys in ((raw_id, ID_KEYS), (image, IMAGE_KEYS), (text, TEXT_KEYS)):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DatasetError(f"{where}: missing {' or '.join(repr(k) for k in keys)}.")
        if isinstance(raw_id, bool) or (isinstance(raw_id, float) and not math.isfinite(raw_id)):
            raise DatasetError(f"{where}: id {raw_id!r} is not usable; use a string or an integer.")
        item_id = str(raw_id)
        if item_id in seen:
            raise DatasetError(f"{where}: duplicate id {item_id!r}; ids must be unique.")
        seen.add(item_id)
        path = resolve_image(image_root, str(image))
        if path not in decoded:  # decoded once per image, before any model is loaded
            try:
                load_image(path)
            except ImageError as err:
                raise DatasetError(f"{where}: {err}") from None
            decoded.add(path)
        items.append(
            Item(
                id=item_id,
                image=path,
                image_name=Path(str(image)).as_posix(),
                text=str(text),
                label=_normalise_label(_pick(row, LABEL_KEYS)),
            )
        )
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DatasetError(f"{source} holds no items.")
    unlabelled = [item.id for item in items if item.label is None]
    if unlabelled and len(unlabelled) < len(items):
        # A typo in the label key would otherwise drop items from the metrics silently.
        warnings.warn(
            f"{source}: {len(unlabelled)} of {len(items)} items have no label (ids "
            f"{unlabelled[:5]}{' ...' if len(unlabelled) > 5 else ''}); they are run "
            f"but left out of accuracy. Label keys read: {', '.join(LABEL_KEYS)}.",
            stacklevel=2,
        )
    return items


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped); a bad line is an error naming its number."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"Question file not found: {file}")
    rows = []
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DatasetError(
                    f"{file}:{number}: not UTF-8 text (byte {err.start}: "
                    f"{raw[err.start : err.start + 1]!r}); save the file as UTF-8."
                ) from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{file}:{number}: not valid JSON ({err.msg}).") from None
    return rows


def read_pope(
    questions: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    limit: int | None = None,
) -> list[Item]:
    """Items of a LLaVA/POPE question file ``{"question_id","image","text","label"}``."""
    rows = read_jsonl(questions)
    return items_from_records(rows, image_root, source=str(questions), limit=limit)


def image_folder(
    root: str | os.PathLike[str],
    prompt: str,
    *,
    label: str | None = None,
    limit: int | None = None,
) -> list[Item]:
    """One item per image under ``root`` (recursive, sorted), all with ``prompt``.

    Item ids are the image paths relative to ``root``.
    """
    if not prompt or not prompt.strip():
        raise DatasetError("image_folder needs a non-empty prompt.")
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise DatasetError(f"Image folder {base} is not a folder.")
    names = sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not names:
        raise DatasetError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {base}.")
    rows = [{"id": name, "image": name, "text": prompt, "label": label} for name in names]
    return items_from_records(rows, base, source=str(base), limit=limit)


def fingerprint(items: Sequence[Item]) -> str:
    """sha256 of the items' ids, image names, texts and labels (not of the pixels).

    Image names are relative to the root, so moving the image folder keeps the
    fingerprint; editing a question or a label changes it.
    """
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item.describe(), sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()
