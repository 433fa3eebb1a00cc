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
    """Symbols <-> label indices (1..N); index 0 is the CTC blank.

    Symbols are single characters, and optionally bigrams (DS2's English outputs at time
    stride 3): two characters of the alphabet, never a space. With bigrams, :meth:`encode`
    cuts each word into non-overlapping pairs from the left, a pair that is not a symbol
    falling back to its first character (see :meth:`segment`); :meth:`decode` joins the
    symbols back into characters. Saved as the JSON list of its symbols either way.
    """

    def __init__(self, symbols: Iterable[str] = ENGLISH):
        self.symbols = tuple(symbols)
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("alphabet has repeated symbols")
        characters = {symbol for symbol in self.symbols if isinstance(symbol, str) and len(symbol) == 1}
        bad = [symbol for symbol in self.symbols if symbol not in characters
               and not (isinstance(symbol, str) and len(symbol) == 2 and " " not in symbol
                        and set(symbol) <= characters)]
        if bad:
            raise ValueError("alphabet symbols must be single characters, or bigrams of two of its characters "
                             f"without a space: {', '.join(repr(symbol) for symbol in bad[:10])}")
        self.bigrams = frozenset(symbol for symbol in self.symbols if len(symbol) == 2)
        self._index = {symbol: i + 1 for i, symbol in enumerate(self.symbols)}

    def __len__(self) -> int:
        """Number of model outputs: the symbols plus the blank."""
        return len(self.symbols) + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Alphabet) and self.symbols == other.symbols

    def __repr__(self) -> str:
        if self.has_bigrams:
            return f"Alphabet({list(self.symbols)!r})"
        return f"Alphabet({''.join(self.symbols)!r})"

    normalize = staticmethod(normalize)

    @property
    def has_bigrams(self) -> bool:
        """Whether some symbols are bigrams (a label may stand for two characters)."""
        return bool(self.bigrams)

    @property
    def characters(self) -> tuple[str, ...]:
        """The single-character symbols, in label order."""
        return tuple(symbol for symbol in self.symbols if len(symbol) == 1)

    def segment(self, text: str) -> list[str]:
        """The symbols ``text`` is labelled with: its characters, or with bigrams DS2's
        segmentation, from the left of each word: the next two characters when they are a
        bigram of the alphabet, else the next character alone ("hello" with "he" and "ll":
        he ll o; with "el" only: h el l o). Spaces are symbols of their own."""
        if not self.bigrams:
            return list(text)
        return segment_bigrams(text, self.bigrams)

    def encode(self, text: str) -> list[int]:
        """Label indices of an already normalized text (bigrams where the alphabet has them,
        see :meth:`segment`). ValueError lists unknown characters."""
        unknown = sorted({char for char in text if char not in self._index})
        if unknown:
            shown = ", ".join(repr(char) for char in unknown)
            raise ValueError(f"characters outside the alphabet: {shown}")
        if not self.bigrams:
            return [self._index[char] for char in text]
        return [self._index[symbol] for symbol in segment_bigrams(text, self.bigrams)]

    def decode(self, labels: Iterable[int]) -> str:
        """Text of label indices (bigrams joined back into characters); blanks are skipped."""
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

    @classmethod
    def with_bigrams(cls, texts: Iterable[str], n_bigrams: int, base: "Alphabet | None" = None) -> "Alphabet":
        """DS2's bigram outputs: ``base`` (default: :meth:`from_texts` of ``texts``) followed by
        the ``n_bigrams`` most frequent bigrams of the (normalized) ``texts``.

        Bigrams are counted as DS2 labels words: each word cut into non-overlapping pairs
        from the left ("hello": he, ll; the odd last character is no pair). Pairs with a
        character outside ``base`` are not counted. Most frequent first, ties by the string,
        so the same texts always give the same alphabet; fewer than ``n_bigrams`` when the
        texts hold fewer distinct pairs. ``base`` must be of single characters.
        """
        if n_bigrams < 0:
            raise ValueError(f"n_bigrams must be >= 0, got {n_bigrams}")
        texts = [normalize(text) for text in texts]
        base = base if base is not None else cls.from_texts(texts)
        if base.has_bigrams:
            raise ValueError("the base alphabet of with_bigrams must be of single characters")
        characters = set(base.symbols)
        counts: Counter[str] = Counter()
        for text in texts:
            for word in text.split(" "):
                counts.update(pair for pair in (word[i:i + 2] for i in range(0, len(word) - 1, 2))
                              if set(pair) <= characters)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(base.symbols + tuple(pair for pair, _ in ranked[:n_bigrams]))


def segment_bigrams(text: str, bigrams: frozenset[str] | set[str]) -> list[str]:
    """``text`` cut into symbols from the left: the next two characters when they are one of
    ``bigrams`` (which hold no space, so a pair never crosses a word boundary), else the next
    character alone."""
    symbols, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in bigrams:
            symbols.append(pair)
            i += 2
        else:
            symbols.append(text[i])
            i += 1
    return symbols
