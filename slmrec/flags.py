"""Command-line values into typed config fields: each flag goes to the dataclass that owns it, converted to the
field's type, so a default and its check are written once (in the dataclass)."""

import dataclasses
import typing

from .errors import FlagError


def split_flags(flags: dict, *configs, fixed=()) -> list:
    """Share command-line flags out among config dataclasses by field name, each value checked against and
    converted to its field's type, so each default and its validation live in the dataclass alone; a flag no
    dataclass has, one of the `fixed` fields (set by the script, e.g. from the data), or a value of the wrong
    type is an error before any work."""
    given = sorted(set(flags) & set(fixed))
    if given:
        raise FlagError(f"{', '.join('--' + k for k in given)}: set from the data and the model, not a flag")
    hints = [typing.get_type_hints(c) for c in configs]
    names = [{f.name for f in dataclasses.fields(c)} - set(fixed) for c in configs]
    unknown = sorted(set(flags) - set().union(*names))
    if unknown:
        raise FlagError(
            f"unknown flag(s): {', '.join('--' + k for k in unknown)}; the options are the fields of "
            + ", ".join(c.__name__ for c in configs)
        )
    return [{k: coerce(k, v, h[k]) for k, v in flags.items() if k in n} for n, h in zip(names, hints)]


TRUE, FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def coerce(name, value, kind):
    """A flag's value as fire parsed it (fire leaves "false" a string and turns "007" into 7) converted to
    `kind`, a field's type hint (bool, int, float, str, list, or one of them | None); FlagError otherwise."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None or str(value).lower() == "none":
            return None
        kind = next(a for a in args if a is not type(None))
    kind = typing.get_origin(kind) or kind
    bad = FlagError(f"--{name}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in TRUE | FALSE:
            return str(value).lower() in TRUE
        raise bad
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad
        try:
            return int(value)
        except ValueError:
            raise bad from None
    if kind is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind is str:
        if isinstance(value, (list, tuple, dict)):
            raise bad
        return str(value)
    if kind is list:
        return (
            [str(v) for v in value]
            if isinstance(value, (list, tuple))
            else [v.strip() for v in str(value).split(",") if v.strip()]
        )
    return value


def parse_ints(value) -> list:
    """A fire flag given as 4, "1,2,4" or (1, 2, 4) -> [1, 2, 4]."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(x) for x in value]
    return [int(x) for x in str(value).strip("()[]").split(",") if x.strip()]
