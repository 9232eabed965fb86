"""Reading answers out of generated text: VQA normalisation, yes/no, option letters.

Each rule is written from the published description of the benchmark's own
scoring script (VQA: the official VQA evaluation's answer processing; MME: its
``calculation.py`` yes/no rule; multiple choice: VLMEvalKit-style letter and
option-text matching). Pure functions on strings, no model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# ----------------------------------------------------------------------------- VQA

# Number words the official VQA processing turns into digits.
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophe, as annotators often type them.
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "im": "i'm",
    "ive": "i've",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "lets": "let's",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "shant": "shan't",
    "shed": "she'd",
    "shes": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "thered": "there'd",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "wed": "we'd",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
# Punctuation the VQA processing removes (or turns into a space inside a word).
PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
# A period that is not a decimal point.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def _punctuation(text: str) -> str:
    out = text
    for mark in PUNCTUATION:
        # Marks next to a space (or a 1,000-style number) vanish; inside a word
        # they separate (``black-and-white`` -> ``black and white``).
        if f"{mark} " in text or f" {mark}" in text or _COMMA_NUMBER.search(text):
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa(answer: str) -> str:
    """The VQA answer normalisation: whitespace, punctuation, digits, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


# ------------------------------------------------------------------------- yes / no


def parse_yes_no_prefix(text: str) -> str | None:
    """MME's rule: the answer itself when it is yes/no, else yes/no in its first 4 characters."""
    answer = text.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return None


# ----------------------------------------------------------------- multiple choice

_LETTER_START = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\]\.:,]|\s|$)")


def parse_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a generated answer picks, or None when it picks none or several.

    In order: the answer starts with a letter of ``options`` (``B``, ``(B)``,
    ``B.``, ``B: ...``); exactly one option letter stands alone as a word in
    it; exactly one option's text occurs in it (case-insensitive).
    """
    letters = [letter for letter in options if letter]
    start = _LETTER_START.match(text)
    if start and start.group(1) in letters:
        return start.group(1)
    alone = [letter for letter in letters if re.search(rf"(?<![A-Za-z]){letter}(?![A-Za-z])", text)]
    if len(alone) == 1:
        return alone[0]
    lowered = text.lower()
    by_text = [
        letter for letter in letters if options[letter] and options[letter].lower() in lowered
    ]
    if len(by_text) == 1:
        return by_text[0]
    return None
