"""One option schema: help and choices live on the typed config dataclasses; one coercion serves every source.

A config field declared with `option(default, "help")` carries its help text; a `Literal[...]` annotation
carries its choices. `coerce` turns a value from the command line (`text=True`: "0.1", "true", "a,b") or from a
YAML grid or Python (`text=False`: checked, never guessed) into the field's type, with an error naming the option
and what it accepts. `add_arguments` makes the command-line flags of one or more configs from the same fields,
and `given` collects the flags a user gave. `validate` checks every field of a config when it is built.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass

from .data import DataError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


_SAME = object()


def option(default, help: str, *, unrecorded=_SAME):  # noqa: A002 (the argparse word)
    """A dataclass field with its default and its help text. `unrecorded`: what a report made before the option
    existed was run with, when that differs from the default (`unrecorded_values`)."""
    metadata = {"help": help}
    if unrecorded is not _SAME:
        metadata["unrecorded"] = unrecorded
    return dataclasses.field(default=default, metadata=metadata)


def unrecorded_values(cls) -> dict:
    """{field: value} for the fields of `cls` whose absence from a report means a run with another value than
    the default: such a report was made with that value, so a sweep must not count it as current."""
    return {f.name: f.metadata["unrecorded"] for f in dataclasses.fields(cls) if "unrecorded" in f.metadata}


@dataclass(frozen=True)
class Option:
    """One field of a config: name, resolved type, default, help and (for a `Literal`) its choices."""

    name: str
    type: object
    default: object
    help: str
    choices: tuple | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def label(cls) -> str:
    """How messages name a config class: `STRIPConfig` → STRIP."""
    return cls.__name__.removesuffix("Config")


@functools.cache
def options_of(cls) -> dict[str, Option]:
    """{field name: Option} of a config dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        literal = _literal(hints[f.name])
        out[f.name] = Option(f.name, hints[f.name], f.default, f.metadata.get("help", ""),
                             typing.get_args(literal) if literal is not None else None)
    return out


def _literal(hint):
    if typing.get_origin(hint) is typing.Literal:
        return hint
    if _is_union(hint):
        return next((h for h in typing.get_args(hint) if typing.get_origin(h) is typing.Literal), None)
    return None


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint) -> str:
    if _is_union(hint):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "none"
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def coerce(cls, name: str, value, *, text: bool = False, what: str = ""):
    """`value` as config `cls`'s field `name` takes it; a DataError names the option and what it accepts.

    text=True parses command-line strings ("0.1", "true", "none", "a,b"); text=False (YAML, Python) only accepts
    values of the right type (an int for a float, a list for a tuple). `what` names the config in messages.
    """
    fields = options_of(cls)
    label = f"{what} " if what else ""
    if name not in fields:
        raise DataError(f"unknown {label}option {name!r}: valid are {', '.join(sorted(fields))}")
    opt = fields[name]
    try:
        return _parse(opt.type, value) if text and isinstance(value, str) else _check(opt.type, value)
    except (TypeError, ValueError):
        if opt.choices and (value is None or isinstance(value, str)) and not _accepts_none(opt.type, value):
            raise DataError(f"unknown {label}{name} {value!r}: use one of {', '.join(map(str, opt.choices))}") \
                from None
        message = f"{label}option {name}: {value!r} is not {_type_name(opt.type)}"
        if not text and isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            message += f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-5)"
        raise DataError(message) from None


def _accepts_none(hint, value) -> bool:
    return value is None and _is_union(hint) and type(None) in typing.get_args(hint)


def _parse(hint, text: str):
    if _is_union(hint):
        args = typing.get_args(hint)
        if type(None) in args and text.strip().lower() == "none":
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(arg, text)
            except (TypeError, ValueError):
                continue
        raise ValueError(text)
    if typing.get_origin(hint) is typing.Literal:
        return _check(hint, text)
    if hint is bool:
        word = text.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(text)
        return word in _TRUE
    if hint in (int, float):
        return hint(text)
    if typing.get_origin(hint) is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        items = tuple(_parse(args[0], part.strip()) for part in text.split(",") if part.strip())
        if not items:
            raise ValueError(text)
        return _check(hint, items)
    return text


def _check(hint, value):
    if _is_union(hint):
        for arg in typing.get_args(hint):
            try:
                return _check(arg, value)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if hint is type(None):
        if value is not None:
            raise ValueError(value)
        return None
    if typing.get_origin(hint) is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(value)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
            raise ValueError(value)
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(value)
        if Ellipsis in args:
            return tuple(_check(args[0], v) for v in value)
        if len(value) != len(args):
            raise ValueError(value)
        return tuple(_check(a, v) for a, v in zip(args, value))
    return value


def validate(config, *, what: str = "") -> None:
    """Check every field of a built config against its type and choices (a DataError names the first bad one)."""
    for name in options_of(type(config)):
        coerce(type(config), name, getattr(config, name), what=what)


def coerce_all(cls, values: dict, *, text: bool = False, what: str = "") -> dict:
    """Every item of `values` coerced as a field of `cls`."""
    return {name: coerce(cls, name, value, text=text, what=what) for name, value in values.items()}


# ---------------------------------------------------------------- command-line flags from the same fields

def add_arguments(group, classes: dict[str, type], *, skip: typing.Iterable[str] = ()) -> None:
    """One flag per field name of the configs `classes` ({label: config class}); a field several configs share
    is one flag. Values stay text (`given` coerces them, so errors name the option); a bool field also gets
    `--no-<name>`, and so does an optional field whose default is not None (it sets None)."""
    seen: dict[str, list] = {}
    for label, cls in classes.items():
        for name, opt in options_of(cls).items():
            if name not in skip:
                seen.setdefault(name, [opt, []])[1].append(label)
    for name, (opt, labels) in seen.items():
        users = f" ({', '.join(labels)})" if len(classes) > 1 else ""
        choices = f"; one of {', '.join(map(str, opt.choices))}" if opt.choices else ""
        default = "" if opt.default is dataclasses.MISSING else f"; default {opt.default!r}"
        group.add_argument(opt.flag, dest=name, default=None, metavar=name.upper(),
                           help=f"{opt.help}{users}{choices}{default}".replace("%", "%%"))
        optional = _is_union(opt.type) and type(None) in typing.get_args(opt.type) and opt.default is not None
        if opt.type is bool or optional:
            group.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_const",
                               const=False if opt.type is bool else "none",
                               help=f"turn off {name}" if opt.type is bool else f"set {name} to none")


def given(args: argparse.Namespace, cls, *, skip: typing.Iterable[str] = (), what: str = "") -> dict:
    """The flags of `args` that the user gave, for the fields of `cls`, coerced to their types."""
    out = {}
    for name in options_of(cls):
        value = getattr(args, name, None)
        if name not in skip and value is not None:
            out[name] = value if isinstance(value, bool) else coerce(cls, name, value, text=True, what=what)
    return out


def given_names(args: argparse.Namespace, names: typing.Iterable[str]) -> list[str]:
    """Which of the option `names` the user gave on the command line."""
    return [name for name in names if getattr(args, name, None) is not None]
