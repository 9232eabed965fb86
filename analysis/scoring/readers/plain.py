"""The plain readers of :mod:`analysis.datasets` in the registry: POPE question files, image folders.

Their items carry a yes/no label (or none) and are scored as POPE answers;
no benchmark rule applies.
"""

from __future__ import annotations

from analysis.datasets import Item, image_folder, read_pope
from analysis.scoring.readers.registry import FOLDER, ReadRequest, register_reader


@register_reader(
    "pope",
    description='a POPE/LLaVA question file (JSONL: "question_id", "image", "text", "label")',
    suffixes=(".jsonl",),
    requires=("images",),
    accepts=("limit",),
)
def _read_pope(request: ReadRequest) -> list[Item]:
    return read_pope(request.source, request.need_path("images"), limit=request.limit)


@register_reader(
    "folder",
    description="a folder of images, one item per image with one prompt",
    suffixes=(FOLDER,),
    requires=("prompt",),
    accepts=("limit",),
)
def _read_folder(request: ReadRequest) -> list[Item]:
    return image_folder(request.source, request.need_text("prompt"), limit=request.limit)
