"""CHAIR: object hallucination in captions (Rohrbach et al., 2018), from its published rule.

A caption's words are mapped to the 80 COCO object categories through a synonym
table (two-word phrases first: "hot dog", "teddy bear", "traffic light"); a
mentioned category that the image's COCO instance annotations do not hold is a
hallucination.

* CHAIR_i = hallucinated object mentions / all object mentions (each category
  counted once per caption);
* CHAIR_s = captions with at least one hallucinated object / all captions;
* recall = annotated categories mentioned / annotated categories.

Lemmatisation: the original uses NLTK's WordNet lemmatiser, whose data cannot
be installed offline. This module uses a built-in rule instead: lower case,
then the synonym table is looked up with the word as written and with a plural
``s`` / ``es`` / ``ies`` removed (``men``, ``women``, ``people``, ``children``,
``mice``, ``knives``, ``geese`` are listed as they are). The synonym table is
this project's own, written from the COCO category names and their common
words; it does not hold the original's rarest entries.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.datasets import DatasetError
from analysis.errors import UserInputError

# COCO category -> words and phrases that name it.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "person",
        "people",
        "man",
        "men",
        "woman",
        "women",
        "boy",
        "girl",
        "child",
        "children",
        "kid",
        "baby",
        "player",
        "skier",
        "surfer",
        "skateboarder",
        "guy",
        "lady",
        "adult",
        "teenager",
        "toddler",
        "rider",
        "pedestrian",
        "officer",
    ),
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "automobile", "van", "taxi", "suv", "sedan", "jeep"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "scooter", "moped"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner", "aeroplane"),
    "bus": ("bus", "trolley"),
    "train": ("train", "locomotive", "tram", "subway"),
    "truck": ("truck", "pickup", "lorry"),
    "boat": ("boat", "ship", "sailboat", "kayak", "canoe", "yacht", "ferry"),
    "traffic light": ("traffic light", "stop light", "traffic signal", "streetlight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench",),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "parrot", "goose", "geese", "crow"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "doggy"),
    "horse": ("horse", "pony", "foal"),
    "sheep": ("sheep", "lamb", "ram"),
    "cow": ("cow", "cattle", "bull", "calf", "oxen"),
    "elephant": ("elephant",),
    "bear": ("bear", "polar bear", "grizzly"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "hand bag"),
    "tie": ("tie", "necktie", "bow tie"),
    "suitcase": ("suitcase", "luggage", "suit case"),
    "frisbee": ("frisbee",),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "football", "baseball", "basketball", "soccer ball", "tennis ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass",),
    "cup": ("cup", "mug"),
    "fork": ("fork",),
    "knife": ("knife", "knives"),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "sub"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog",),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    "chair": ("chair", "stool"),
    "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant", "plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "desk"),
    "toilet": ("toilet", "urinal"),
    "tv": ("tv", "television", "monitor", "screen"),
    "laptop": ("laptop", "computer", "notebook"),
    "mouse": ("mouse", "mice"),
    "remote": ("remote", "controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "smartphone", "mobile phone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book", "novel"),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

_WORD = re.compile(r"[a-z]+")


def _lookup_table() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    single: dict[str, str] = {}
    double: dict[tuple[str, str], str] = {}
    for category, words in SYNONYMS.items():
        for word in words:
            parts = tuple(word.split())
            if len(parts) == 1:
                single[parts[0]] = category
            elif len(parts) == 2:
                double[(parts[0], parts[1])] = category
            else:
                raise ValueError(f"synonym {word!r}: at most two words")
    return single, double


_SINGLE, _DOUBLE = _lookup_table()


def _singular(word: str) -> list[str]:
    out = [word]
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and len(word) > 2:
        out.append(word[:-1])
    return out


def _category(word: str) -> str | None:
    for form in _singular(word):
        if form in _SINGLE:
            return _SINGLE[form]
    return None


def caption_objects(caption: str) -> list[str]:
    """COCO categories a caption mentions, once each, in order of first mention."""
    words = _WORD.findall(caption.lower())
    found: list[str] = []
    index = 0
    while index < len(words):
        category = None
        if index + 1 < len(words):
            first, second = words[index], words[index + 1]
            for form in _singular(second):
                if (first, form) in _DOUBLE:
                    category = _DOUBLE[(first, form)]
                    break
            if category is not None:
                index += 2
                if category not in found:
                    found.append(category)
                continue
        category = _category(words[index])
        if category is not None and category not in found:
            found.append(category)
        index += 1
    return found


@dataclass(frozen=True)
class ChairCaption:
    """One caption's mentioned, hallucinated and annotated categories."""

    mentioned: tuple[str, ...]
    hallucinated: tuple[str, ...]
    annotated: tuple[str, ...]


def chair_caption(caption: str, annotated: Iterable[str]) -> ChairCaption:
    truth = tuple(sorted(set(annotated)))
    mentioned = tuple(caption_objects(caption))
    return ChairCaption(mentioned, tuple(m for m in mentioned if m not in truth), truth)


def chair_scores(captions: Sequence[ChairCaption]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s and recall, in percent."""
    if not captions:
        raise UserInputError("CHAIR needs at least one caption.")
    mentions = sum(len(c.mentioned) for c in captions)
    hallucinated = sum(len(c.hallucinated) for c in captions)
    annotated = sum(len(c.annotated) for c in captions)
    covered = sum(len(set(c.mentioned) & set(c.annotated)) for c in captions)
    return {
        "chair_i": 100.0 * hallucinated / mentions if mentions else 0.0,
        "chair_s": 100.0 * sum(bool(c.hallucinated) for c in captions) / len(captions),
        "recall": 100.0 * covered / annotated if annotated else float("nan"),
    }


def coco_objects(annotations: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Image file name -> COCO categories present, from an instances_*.json file."""
    path = Path(annotations).expanduser()
    try:
        data: Mapping[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"COCO annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not a COCO annotation JSON ({err}).") from None
    try:
        names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        files = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
        out: dict[str, set[str]] = {name: set() for name in files.values()}
        for ann in data["annotations"]:
            out[files[int(ann["image_id"])]].add(names[int(ann["category_id"])])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: missing COCO field ({err}).") from None
    unknown = {n for objs in out.values() for n in objs} - set(SYNONYMS)
    if unknown:
        raise DatasetError(f"{path}: categories {sorted(unknown)} are not COCO's 80.")
    return out
