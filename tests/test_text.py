import json
import string

import pytest

from ds2.text import BLANK, ENGLISH, Alphabet, normalize


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello World", "hello world"),  # case
        ("HELLO, World! Is it 'so'?", "hello world is it so"),  # punctuation, quotes around a word
        ("Don\u2019t O\u2018Neil`s", "don't o'neil's"),  # curly / look-alike apostrophes
        ("don't o'clock", "don't o'clock"),  # apostrophes inside words stay
        ("well-known \u2014 fact\u2013based 1/2", "well known fact based 1 2"),  # dashes, slashes
        ("\u201cQuoted,\u201d she said. \"Twice.\"", "quoted she said twice"),  # curly and straight quotes
        ("'single' quotes, students' books", "single quotes students books"),
        ("  a\t b\n\nc \u00a0 d  ", "a b c d"),  # every kind of whitespace -> one space
        ("-- ... !?", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_normalize_keeps_letters_and_digits_of_any_language():
    assert normalize("Gro\u00dfe \u00c4RGER, 42 Mal!") == "gro\u00dfe \u00e4rger 42 mal"
    assert normalize("\u4f60\u597d\uff0c\u4e16\u754c\u3002") == "\u4f60\u597d\u4e16\u754c"  # CJK punctuation goes


def test_normalize_composes_decomposed_characters():
    decomposed = "Gro\u0308sse"  # o + combining diaeresis
    assert normalize(decomposed) == "gr\u00f6sse"
    assert normalize(decomposed) == normalize("GR\u00d6SSE")


def test_normalize_is_idempotent():
    text = "\u201cIt\u2019s a well-known fact,\u201d said O\u2019Neil \u2014 twice."
    assert normalize(normalize(text)) == normalize(text)


# --------------------------------------------------------------------------- Alphabet


def test_english_default():
    alphabet = Alphabet()
    assert BLANK == 0
    assert alphabet.symbols == (" ", "'") + tuple(string.ascii_lowercase) == ENGLISH
    assert len(alphabet) == 29  # 28 symbols + the blank
    labels = alphabet.encode(" '" + string.ascii_lowercase)
    assert labels == list(range(1, 29))  # the blank (0) is never a label


def test_encode_decode_round_trip():
    alphabet = Alphabet()
    text = normalize("The cat\u2019s hat, O'Neil's -- quite old.")
    labels = alphabet.encode(text)
    assert alphabet.decode(labels) == text == "the cat's hat o'neil's quite old"


def test_decode_skips_blanks():
    alphabet = Alphabet()
    labels = alphabet.encode("hi yo")
    with_blanks = [BLANK]
    for label in labels:
        with_blanks += [label, BLANK]
    assert alphabet.decode(with_blanks) == "hi yo"


def test_encode_error_lists_the_unknown_characters():
    with pytest.raises(ValueError) as error:
        Alphabet().encode("caf\u00e9 at 42")
    message = str(error.value)
    assert "outside the alphabet" in message
    for char in ("\u00e9", "4", "2"):
        assert repr(char) in message
    for char in ("c", "a", "t"):
        assert repr(char) not in message


@pytest.mark.parametrize("symbols, match", [("abca", "repeated"), (["a", "bc"], "single characters")])
def test_bad_symbol_lists_are_refused(symbols, match):
    with pytest.raises(ValueError, match=match):
        Alphabet(symbols)


GERMAN = ["Die B\u00e4ume bl\u00fchen.", "\u00dcBER gr\u00fcne Gr\u00d6\u00dfe!", "Ein sch\u00f6nes Haus"]
MANDARIN = ["\u4f60\u597d \u4e16\u754c\u3002", "\u4e16\u754c \u5f88\u5927\uff01"]


def test_from_texts_german_is_space_first_then_code_point_order():
    alphabet = Alphabet.from_texts(GERMAN)
    assert alphabet.symbols[0] == " "
    assert list(alphabet.symbols[1:]) == sorted(alphabet.symbols[1:])
    assert set(alphabet.symbols) == set("".join(normalize(text) for text in GERMAN))
    assert {"\u00e4", "\u00f6", "\u00fc", "\u00df"} <= set(alphabet.symbols)
    assert not set(alphabet.symbols) & set("!.\u00d6\u00dcUBER")  # punctuation and capitals folded away
    text = normalize(GERMAN[1])
    assert alphabet.decode(alphabet.encode(text)) == text == "\u00fcber gr\u00fcne gr\u00f6\u00dfe"


@pytest.mark.parametrize("texts", [GERMAN, MANDARIN], ids=["german", "mandarin"])
def test_from_texts_is_deterministic(texts):
    forward = Alphabet.from_texts(texts)
    backward = Alphabet.from_texts(list(reversed(texts)))
    assert forward == backward
    assert forward.symbols[0] == " "


def test_from_texts_mandarin():
    alphabet = Alphabet.from_texts(MANDARIN)
    assert alphabet.symbols == (" ", "\u4e16", "\u4f60", "\u5927", "\u597d", "\u5f88", "\u754c")
    assert len(alphabet) == 8


def test_from_texts_min_count_and_empty():
    alphabet = Alphabet.from_texts(["aab", "a"], min_count=2)
    assert alphabet.symbols == ("a",)
    with pytest.raises(ValueError, match="no characters"):
        Alphabet.from_texts(["...", "!!"])


def test_save_load_round_trip(tmp_path):
    alphabet = Alphabet.from_texts(GERMAN + MANDARIN)
    path = tmp_path / "model" / "alphabet.json"
    alphabet.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == list(alphabet.symbols)
    assert "\u00e4" in path.read_text(encoding="utf-8")  # stored as text, not \\u escapes
    loaded = Alphabet.load(path)
    assert loaded == alphabet
    text = normalize(GERMAN[0])
    assert loaded.encode(text) == alphabet.encode(text)
    assert [p.name for p in path.parent.iterdir()] == ["alphabet.json"]  # no temporary left


def test_alphabets_differ_when_symbols_differ():
    assert Alphabet("ab") != Alphabet("ba")
    assert Alphabet("ab") != ("a", "b")
