"""Options defined once: ranges checked when a config is built, the CLI's view of the fields."""

import math
from dataclasses import dataclass

import pytest

from ds2.config import (ConfigError, check, cli_fields, from_cli, option, parse_ints, parse_pairs, parse_strs,
                        show_ints, show_pairs)


@dataclass
class Example:
    name: str  # not an option: no help, never checked
    count: int = option(3, "How many.", min=1, max=10)
    rate: float = option(0.5, "A rate.", above=0)
    limit: float | None = option(None, "A limit.", min=0)
    kind: str = option("a", "Which.", choices=("a", "b"))
    sizes: tuple = option((4, 8), "Sizes.", each_min=1, parse=parse_ints, show=show_ints)
    device: str = option("cpu", "Where.", pattern=r"cpu|cuda(:\d+)?", pattern_help="cpu or cuda:N")
    hidden: int = option(0, "Not on the command line.", cli=False)

    def __post_init__(self):
        check(self)


@pytest.mark.parametrize("values,message", [
    (dict(count=0), "--count: must be >= 1, got 0"),
    (dict(count=11), "--count: must be <= 10, got 11"),
    (dict(rate=0.0), "--rate: must be > 0, got 0.0"),
    (dict(rate=math.inf), "--rate: must be finite, got inf"),
    (dict(rate=math.nan), "--rate: must be a number, got nan"),
    (dict(limit=-1.0), "--limit: must be >= 0, got -1.0"),
    (dict(kind="c"), "--kind: must be one of a, b, got 'c'"),
    (dict(sizes=(4, 0)), "--sizes: every value must be >= 1, got 4,0"),
    (dict(device="gpu"), "--device: must be cpu or cuda:N, got 'gpu'"),
])
def test_out_of_range_values_name_the_option(values, message):
    with pytest.raises(ConfigError) as error:
        Example("x", **values)
    assert str(error.value) == message


def test_good_values_and_none_where_the_default_is_none_pass():
    Example("x", count=10, rate=1e-9, limit=None, kind="b", sizes=(1,), device="cuda:1")


def test_cli_fields_and_from_cli():
    fields = {field.name: field for field in cli_fields(Example)}
    assert list(fields) == ["count", "rate", "limit", "kind", "sizes", "device"]  # name and hidden are not options
    assert fields["sizes"].type is str and fields["sizes"].default == "4,8"
    assert fields["kind"].help == "Which. One of: a, b."
    built = from_cli(Example, {"count": 2, "sizes": "1,2,3", "unrelated": 5}, name="n")
    assert (built.name, built.count, built.sizes) == ("n", 2, (1, 2, 3))
    with pytest.raises(ConfigError, match="--sizes: expected integers separated by commas"):
        from_cli(Example, {"sizes": "1,two"}, name="n")


def test_parsers_round_trip():
    assert parse_pairs(show_pairs(((41, 11), (21, 11)))) == ((41, 11), (21, 11))
    assert parse_ints(show_ints((32, 32, 96))) == (32, 32, 96)
    assert parse_strs(" en-us, +m3 ,") == ("en-us", "+m3") and parse_strs("") == ()
    for bad in ("41x11,21", "41x", "x", ""):
        with pytest.raises(ValueError):
            parse_pairs(bad)
