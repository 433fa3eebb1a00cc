"""The English sentence grammar: word ranges, vocabulary, reproducibility, numbers."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from ds2 import grammar
from ds2.grammar import generate_sentences
from ds2.text import Alphabet


@pytest.mark.parametrize("min_words, max_words", [(3, 12), (1, 4), (8, 8), (10, 20)])
def test_sentences_respect_the_word_range_and_the_alphabet(min_words, max_words):
    sentences = generate_sentences(300, random.Random(1), min_words, max_words)
    alphabet = Alphabet()
    assert len(sentences) == len(set(sentences)) == 300
    for sentence in sentences:
        assert min_words <= len(sentence.split()) <= max_words
        assert sentence == alphabet.normalize(sentence)
        alphabet.encode(sentence)  # raises on any character outside a-z, space, apostrophe
    # Every length the grammar can make (two words and up) is there, not only the easy ones.
    lengths = {len(s.split()) for s in sentences}
    assert lengths == set(range(max(min_words, 2), max_words + 1))


def test_sentences_use_a_real_vocabulary():
    sentences = generate_sentences(2000, random.Random(0), 3, 12)
    words = Counter(word for sentence in sentences for word in sentence.split())
    assert 300 < len(words) < 2000
    assert {"the", "twenty", "o'clock", "didn't", "where"} <= set(words)
    assert any(sentence.endswith(" dollars") for sentence in sentences)  # numbers spelled out


def test_exclude_is_respected():
    taken = set(generate_sentences(200, random.Random(7), 3, 6))
    # The same random state would give the same sentences again, unless excluded.
    assert set(generate_sentences(200, random.Random(7), 3, 6)) == taken
    fresh = generate_sentences(200, random.Random(7), 3, 6, exclude=taken)
    assert len(fresh) == 200 and not set(fresh) & taken


def test_sentences_are_reproducible_and_seed_dependent():
    assert generate_sentences(50, random.Random(3), 3, 12) == generate_sentences(50, random.Random(3), 3, 12)
    assert generate_sentences(50, random.Random(3), 3, 12) != generate_sentences(50, random.Random(4), 3, 12)


def test_impossible_requests_are_errors():
    with pytest.raises(RuntimeError, match="distinct sentences"):
        generate_sentences(1, random.Random(0), 1, 1)  # the grammar has no one-word sentence
    with pytest.raises(ValueError):
        generate_sentences(5, random.Random(0), 0, 3)


@pytest.mark.parametrize(
    "n, words",
    [(0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (42, "forty two"),
     (100, "one hundred"), (305, "three hundred and five"), (999, "nine hundred and ninety nine")],
)  # fmt: skip
def test_number_words(n, words):
    assert grammar.number_words(n) == words


def test_questions_are_spoken_as_questions():
    assert grammar.spoken_form("where is the red box") == "where is the red box?"
    assert grammar.spoken_form("the dog ran") == "the dog ran."


def test_grammar_is_pure_python():
    """The recipes build LM text with it; it must not pull in torch or numpy."""
    code = (
        "import sys, ds2.grammar;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
