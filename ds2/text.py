"""Characters: the alphabet stored with every model, and text normalization.

The model's output at index ``BLANK`` (0) is the CTC blank; the alphabet's symbols take
indices 1..N. The English default is space, apostrophe and a-z (28 symbols, 29 outputs).
"""

from __future__ import annotations

import json
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ds2.io import atomic_write

BLANK = 0  # index of the CTC blank in every output distribution
ENGLISH = (" ", "'") + tuple(string.ascii_lowercase)

# Apostrophe look-alikes folded into "'"; dashes and slashes separate words.
_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"}
_SEPARATORS = set("-\u2010\u2011\u2012\u2013\u2014/_")


def normalize(text: str) -> str:
    """Case- and punctuation-normalize a transcript, in any language.

    NFC, lower case, apostrophe look-alikes to "'", dashes and slashes to spaces,
    other punctuation and symbols removed, quotes around words removed, whitespace
    collapsed to single spaces. Letters, digits and marks are kept as they are: whether
    they fit the alphabet is for :meth:`Alphabet.encode` to say.
    """
    text = unicodedata.normalize("NFC", text).lower()
    out = []
    for char in text:
        char = _APOSTROPHES.get(char, char)
        if char == "'":
            out.append(char)
        elif char in _SEPARATORS or char.isspace():
            out.append(" ")
        elif unicodedata.category(char)[0] in "PS":  # punctuation, symbols
            continue
        else:
            out.append(char)
    words = ("".join(out)).split()
    # An apostrophe belongs inside a word ("don't", "o'clock"); quotes around one do not.
    words = [word.strip("'") for word in words]
    return " ".join(word for word in words if word)


class Alphabet:
    """Symbols <-> label indices (1..N); index 0 is the CTC blank."""

    def __init__(self, symbols: Iterable[str] = ENGLISH):
        self.symbols = tuple(symbols)
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("alphabet has repeated symbols")
        if any(len(symbol) != 1 for symbol in self.symbols):
            raise ValueError("alphabet symbols must be single characters")
        self._index = {symbol: i + 1 for i, symbol in enumerate(self.symbols)}

    def __len__(self) -> int:
        """Number of model outputs: the symbols plus the blank."""
        return len(self.symbols) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alphabet) and self.symbols == other.symbols

    def __repr__(self) -> str:
        return f"Alphabet({''.join(self.symbols)!r})"

    normalize = staticmethod(normalize)

    def encode(self, text: str) -> list[int]:
        """Label indices of an already normalized text. ValueError lists unknown characters."""
        unknown = sorted({char for char in text if char not in self._index})
        if unknown:
            shown = ", ".join(repr(char) for char in unknown)
            raise ValueError(f"characters outside the alphabet: {shown}")
        return [self._index[char] for char in text]

    def decode(self, labels: Iterable[int]) -> str:
        """Text of label indices; blanks are skipped."""
        return "".join(self.symbols[i - 1] for i in labels if i != BLANK)

    def to_list(self) -> list[str]:
        return list(self.symbols)

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as handle:
            json.dump(self.to_list(), handle, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | Path) -> "Alphabet":
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1) -> "Alphabet":
        """The characters of normalized ``texts`` seen at least ``min_count`` times.

        Space comes first when present, then the rest in code-point order, so the same
        texts always give the same alphabet.
        """
        counts = Counter(char for text in texts for char in normalize(text))
        symbols = sorted(char for char, count in counts.items() if count >= min_count)
        if " " in symbols:
            symbols.remove(" ")
            symbols.insert(0, " ")
        if not symbols:
            raise ValueError("no characters found to build an alphabet from")
        return cls(symbols)
