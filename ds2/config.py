"""Options defined once: a dataclass field carries its default, its valid range and its help.

    @dataclass
    class TrainConfig:
        epochs: int = option(20, "Passes over the training set.", min=1)

        def __post_init__(self):
            check(self)

:func:`check` (called by each config's ``__post_init__``) refuses an out-of-range value with a
:class:`ConfigError` that names the option as the command line spells it (``--epochs``), so
a bad value stops a command before any work starts. ``cli.py`` derives each command's
options from these fields (:func:`cli_fields`): name, type, default and help come from here,
nowhere else. Imports nothing from ds2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any


class ConfigError(ValueError):
    """An option value outside its valid range; the message names the option."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    choices: Sequence[str] | None = None,
    each_min: float | None = None,
    pattern: str | None = None,
    pattern_help: str = "",
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with what the command line and :func:`check` need.

    min / max: inclusive bounds; above: exclusive lower bound (``lr`` > 0).
    choices: the allowed strings. each_min: lower bound of every item of a tuple option.
    pattern: a regular expression a string must match in full; pattern_help says it in words.
    parse / show: how the command line reads a non-scalar value from one string and shows
    its default (e.g. "32,32,96" <-> (32, 32, 96)). cli=False: not a command-line option.
    Float options must be finite unless a bound says otherwise (max=math.inf).
    None is always accepted where the default is None ("not set").
    """
    metadata = dict(help=help, min=min, max=max, above=above, choices=tuple(choices) if choices else None,
                    each_min=each_min, pattern=pattern, pattern_help=pattern_help, parse=parse, show=show, cli=cli)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """The command-line spelling of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def check(config) -> None:
    """Raise ConfigError for the first field of ``config`` outside its declared range."""
    for field in dataclasses.fields(config):
        meta = field.metadata
        if "help" not in meta:
            continue
        value = getattr(config, field.name)
        if value is None and field.default is None:
            continue
        problem = _problem(value, meta)
        if problem:
            raise ConfigError(f"{flag_name(field.name)}: {problem}, got {_shown(value, meta)}")


def check_ranges(config, *names: str) -> None:
    """Raise ConfigError unless each named tuple field is a finite LOW,HIGH pair with LOW <= HIGH."""
    for name in names:
        values = getattr(config, name)
        if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] > values[1]:
            shown = ",".join(f"{v:g}" for v in values)
            raise ConfigError(f"{flag_name(name)}: give LOW,HIGH with LOW <= HIGH, got {shown}")


def _problem(value, meta) -> str | None:
    if meta["choices"] is not None:
        return None if value in meta["choices"] else f"must be one of {', '.join(meta['choices'])}"
    if meta["pattern"] is not None:
        return None if re.fullmatch(meta["pattern"], str(value)) else f"must be {meta['pattern_help'] or meta['pattern']}"
    if isinstance(value, bool) or not isinstance(value, (int, float, tuple)):
        return None
    if isinstance(value, tuple):
        if meta["each_min"] is not None:
            flat = [v for item in value for v in (item if isinstance(item, tuple) else (item,))]
            if any(v < meta["each_min"] for v in flat):
                return f"every value must be >= {meta['each_min']:g}"
        return None
    if isinstance(value, float) and math.isnan(value):
        return "must be a number"
    if isinstance(value, float) and math.isinf(value) and meta["max"] != math.inf:
        return "must be finite"
    if meta["min"] is not None and value < meta["min"]:
        return f"must be >= {meta['min']:g}"
    if meta["above"] is not None and value <= meta["above"]:
        return f"must be > {meta['above']:g}"
    if meta["max"] is not None and value > meta["max"]:
        return f"must be <= {meta['max']:g}"
    return None


def _shown(value, meta) -> str:
    return meta["show"](value) if meta["show"] and value is not None else repr(value)


@dataclasses.dataclass(frozen=True)
class CliField:
    """One command-line option derived from a config field."""

    name: str  # the field (and keyword argument) name
    type: Any  # what the command line parses: the field's type, or str with a parser
    default: Any  # as the command line shows and passes it
    help: str
    choices: tuple[str, ...] | None
    parse: Callable[[str], Any] | None  # command-line string -> field value


def cli_fields(config_class, exclude: Sequence[str] = ()) -> list[CliField]:
    """The command-line options of a config dataclass, in field order."""
    hints = typing.get_type_hints(config_class)
    out = []
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        if "help" not in meta or not meta["cli"] or field.name in exclude:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if meta["parse"] is not None:
            kind = str if default is not None else typing.Optional[str]
            default = meta["show"](default) if default is not None else None
        else:
            kind = hints[field.name]
        help_text = meta["help"]
        if meta["choices"]:
            help_text += f" One of: {', '.join(meta['choices'])}."
        out.append(CliField(field.name, kind, default, help_text, meta["choices"], meta["parse"]))
    return out


def from_cli(config_class, values: dict, **fixed):
    """Build ``config_class`` from command-line values (parsing strings where declared)
    plus ``fixed`` keyword arguments; unknown keys in ``values`` are ignored."""
    kwargs = dict(fixed)
    for field in cli_fields(config_class):
        if field.name in values and field.name not in fixed:
            value = values[field.name]
            if field.parse is not None and value is not None:
                try:
                    value = field.parse(value)
                except ValueError as err:
                    raise ConfigError(f"{flag_name(field.name)}: {err}") from None
            kwargs[field.name] = value
    return config_class(**kwargs)


# --------------------------------------------------------------------------- parsers


def parse_ints(text: str) -> tuple[int, ...]:
    """'32,32,96' -> (32, 32, 96)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected integers separated by commas, e.g. 32,32,96; got {text!r}") from None


def show_ints(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """'41x11,21x11' -> ((41, 11), (21, 11))."""
    try:
        pairs = tuple(tuple(int(v) for v in item.split("x")) for item in text.split(","))
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"expected FxT pairs separated by commas, e.g. 41x11,21x11; got {text!r}")
    return pairs


def show_pairs(pairs: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{f}x{t}" for f, t in pairs)


def parse_strs(text: str) -> tuple[str, ...]:
    """'en-us,+m3' -> ('en-us', '+m3'); '' -> ()."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def show_strs(values: tuple[str, ...]) -> str:
    return ",".join(values)


# torch device names the options accept (checked before any work; availability is checked when used)
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def parse_floats(text: str) -> tuple[float, ...]:
    """'0.1,0.6' -> (0.1, 0.6)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected numbers separated by commas, e.g. 0.1,0.6; got {text!r}") from None


def show_floats(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)
