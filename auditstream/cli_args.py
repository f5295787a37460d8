"""Frozen argument dataclasses become argparse options: each field's ``metadata['help']`` is its
``--help`` text, so a job's arguments are documented exactly once, where they are declared.

Field types map to options as follows: ``int``/``float``/``str``/``Path`` take one value,
``bool`` becomes ``--flag/--no-flag``, ``Literal[...]`` restricts the choices, ``list[T]`` and
``tuple[T, ...]`` take several values, ``T | None`` is treated as ``T``; a field without a
default is a required option. ``dataclass_from_namespace`` turns the parsed options back into
the dataclass, so ``cls() == dataclass_from_namespace(cls, parser.parse_args([]))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from auditstream.errors import AuditstreamError, BadArguments

T = TypeVar("T")
_SCALARS = (int, float, str, Path)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` options for every field of dataclass ``cls`` (except ``skip``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        hint = _strip_optional(hints[f.name])
        origin = typing.get_origin(hint)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        options: dict[str, Any] = {"dest": f.name}
        if f.default is not dataclasses.MISSING:
            options["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            options["default"] = f.default_factory()
        else:
            options["required"] = True
        if "default" in options:
            help_text = f"{help_text} (default: {options['default']})"
        if hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = typing.get_args(hint)
            options.update(type=type(choices[0]), choices=choices)
        elif origin in (list, tuple):
            args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [str]
            options.update(type=args[0] if args[0] in _SCALARS else str, nargs="*")
        else:
            options["type"] = hint if hint in _SCALARS else str
        parser.add_argument(flag, help=help_text, **options)


def dataclass_from_namespace(cls: type[T], namespace: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from the parsed options that match its fields."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(namespace).items() if k in fields}
    for name, value in values.items():  # nargs gives lists; a frozen dataclass may want a tuple
        if isinstance(value, list) and typing.get_origin(_strip_optional(hints[name])) is tuple:
            values[name] = tuple(value)
    values.update(overrides)
    try:
        return cls(**values)
    except AuditstreamError:
        raise
    except ValueError as e:  # the dataclass's own check (__post_init__): a message, not a traceback
        raise BadArguments(str(e)) from None
