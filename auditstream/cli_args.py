"""Frozen argument dataclasses become argparse options: each field's ``metadata['help']`` is its
``--help`` text, so a job's arguments are documented exactly once, where they are declared.

Field types map to options as follows: ``int``/``float``/``str``/``Path`` take one value,
``bool`` becomes ``--flag/--no-flag``, ``Literal[...]`` restricts the choices, ``list[T]`` and
``tuple[T, ...]`` take several values, ``T | None`` is treated as ``T``; a field without a
default is a required option. ``dataclass_from_namespace`` turns the parsed options back into
the dataclass, so ``cls() == dataclass_from_namespace(cls, parser.parse_args([]))``.

A numeric field may also say what it accepts: ``metadata['check']`` is a :class:`Range` (the
presets below: ``POSITIVE``, ``PROBABILITY``, ``COUNT``, ``SEED``, ...). Its words are appended
to the ``--help`` line, and :func:`check_fields` -- called from the dataclass's
``__post_init__`` -- refuses a value outside it (NaN and infinities included: argparse's
``float`` accepts ``nan``, ``inf`` and ``1e999``) with a :class:`ConfigError` that names the
option, so the command line prints one ``auditstream: error: invalid --lr=nan: expected ...``
line and exits 2 before any work starts (``dataclass_from_namespace`` runs it too). A checked
whole-number option hands ``1.5`` on to the check instead of argparse's "invalid int value".
Options that are not dataclass fields (``promote``'s) use :func:`check_value` with the same
ranges. A plain argparse option is declared with :func:`add_checked_argument`, whose
:class:`Checked` action refuses a value outside its :class:`Range` while the command line is
parsed, in the same one line (``auditstream.cli.main`` prints it and exits 2), and appends the
range to its help just as a checked field does; tests/auditstream/test_every_numeric_option_is_checked.py
fails on any numeric option that is neither. A command that derives further seeds from
``--seed`` (``seed + i``, ``10 * seed + k``) refuses one whose derived seeds would leave ``SEED``
with :func:`check_derived_seed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from auditstream.errors import AuditstreamError, BadArguments, ConfigError

T = TypeVar("T")
_SCALARS = (int, float, str, Path)


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: a finite number (a whole one when ``whole``) from
    ``low`` to ``high`` (``None``: unbounded), each end included unless ``low_open`` /
    ``high_open``. A bool is no number, a float no whole number."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False

    def describe(self) -> str:
        """The accepted values in words, e.g. "a number strictly between 0 and 1"."""
        kind = "a whole number" if self.whole else "a finite number"
        low, high = (None if b is None else f"{b:g}" if isinstance(b, float) else str(b) for b in (self.low, self.high))
        if low is not None and high is not None:
            noun = "a whole number" if self.whole else "a number"
            if self.low_open and self.high_open:
                text = f"{noun} strictly between {low} and {high}"
            elif not self.low_open and not self.high_open:
                text = f"{noun} from {low} to {high}"
            else:
                text = f"{noun} {'>' if self.low_open else '>='} {low} and {'<' if self.high_open else '<='} {high}"
        elif low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {low}"
        elif high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {high}"
        else:
            text = kind
        return text

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.whole and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or not (value >= self.high if self.high_open else value > self.high)


# The ranges the training, retraining and promotion options share.
POSITIVE = Range(0.0, low_open=True)  # a learning rate, a temperature, a clipping norm
NON_NEGATIVE = Range(0.0)  # a weight decay, a loss weight
PROBABILITY = Range(0.0, 1.0, low_open=True, high_open=True)  # a delta, a target risk
SHARE = Range(0.0, 1.0)  # a share of the items, 0 and 1 included
FRACTION = Range(0.0, 1.0, low_open=True)  # a share that must keep something; a discount factor
LEFTOVER = Range(0.0, 1.0, high_open=True)  # a share that must leave something over (a defer rate)
COUNT = Range(1, whole=True)  # epochs, steps, batch size, sample counts, threads
COUNT_OR_ZERO = Range(0, whole=True)  # a count where 0 means none, or "the default"
SEED = Range(0, 2**32 - 1, whole=True)  # numpy, torch and gymnasium all take these
PORT = Range(0, 65535, whole=True)  # a TCP port where 0 means "a free one" or "none"
LISTEN_PORT = Range(1, 65535, whole=True)  # a TCP port a server listens on
NICENESS = Range(0, 19, whole=True)  # added to a process's niceness: 0 (none) to 19 (the lowest priority)


def check_value(option: str, value: T, accepted: Range, example: object = None) -> T:
    """``value`` if ``accepted`` holds it, else :class:`ConfigError` naming ``option`` (e.g.
    ``--lr``), what it accepts and, when given, an ``example`` of a good value."""
    if not accepted.accepts(value):
        hint = "" if example is None else f", e.g. {example!r}"
        raise ConfigError(option, value, accepted.describe() + hint)
    return value


def check_fields(obj: object) -> None:
    """Check every field of dataclass ``obj`` whose metadata has a ``check`` :class:`Range`. The
    error names the field's option and gives its default as the example; a ``None`` value is
    left alone (it means "the preset" where a field's default is ``None``)."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        accepted = f.metadata.get("check")
        value = getattr(obj, f.name)
        if accepted is None or value is None:
            continue
        option = "--" + f.name.replace("_", "-")
        if f.default is None:
            if not accepted.accepts(value):
                raise ConfigError(option, value, f"{accepted.describe()}, or leave {option} out for the preset")
        else:
            check_value(option, value, accepted, None if f.default is dataclasses.MISSING else f.default)


def check_derived_seed(seed: int, derive: Callable[[int], int], how: str, option: str = "--seed") -> int:
    """``seed`` if every seed the command derives from it stays in :data:`SEED`; ``derive`` gives the
    largest derived seed for a given ``seed`` (increasing in it) and ``how`` says in words how it
    is derived, e.g. ``"seed + episodes - 1"``. Else :class:`ConfigError` naming ``option`` and the
    largest seed that fits (numpy's legacy seeding and the range this project promises end at
    2**32 - 1; wrapping around would silently repeat seeds)."""
    check_value(option, seed, SEED, 0)
    top = int(SEED.high)  # type: ignore[arg-type]
    if derive(seed) <= top:
        return seed
    if derive(0) > top:
        raise ConfigError(option, seed, f"a seed whose derived seeds ({how}) stay <= {top}: none does with these "
                                        "options, give fewer repetitions")
    low, high = 0, seed  # derive(low) fits, derive(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if derive(middle) <= top else (low, middle)
    raise ConfigError(option, seed, f"a whole number from 0 to {low}, so that the largest seed derived from it "
                                    f"({how}) stays <= {top}, e.g. 0")


def check_output_path(option: str, text: str | Path, example: str, folder: bool = False) -> Path:
    """``text`` if this user can write there: a file (or, with ``folder``, a directory) that is
    there or can be created, its missing parent folders included. Else :class:`ConfigError`
    naming ``option`` with ``example`` as a good value: an empty path, a file where a folder is
    needed (``README.md/x.npz``: a parent that is a file), a directory where a file is needed, a
    first existing parent this user may not write in. Cheap: a command calls it before it reads
    a topic or trains anything, so a typo costs one line, not a traceback after the work."""
    import os

    if not str(text).strip():
        raise ConfigError(option, str(text), f"a path, e.g. {example}")
    path = Path(text)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(option, str(text), f"a folder ({text} is a file), e.g. {example}")
    if not folder and path.is_dir():
        raise ConfigError(option, str(text), f"a file ({text} is a folder), e.g. {path / Path(example).name}")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:  # the missing folders are created: the first there decides
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(option, str(text), f"a path whose folders can be created ({parent} is a file, not a "
                                             f"folder), e.g. {example}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(option, str(text), f"a path in a folder this user may write to ({parent} is not), "
                                             f"e.g. {example}")
    return path


class Checked(argparse.Action):
    """An argparse action that stores one number after checking it against ``accepted`` (a
    :class:`Range`); outside it, :class:`ConfigError` naming the option with ``example`` as a good
    value. Declared through :func:`add_checked_argument`."""

    def __init__(self, option_strings: list[str], dest: str, accepted: Range, example: object = None,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.accepted, self.example = accepted, example

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        option = option_string or self.option_strings[0]
        setattr(namespace, self.dest, check_value(option, values, self.accepted, self.example))


def add_checked_argument(parser: argparse.ArgumentParser, flag: str, accepted: Range, *, default: Any = None,
                         help: str = "", example: object = None, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(flag, ...)`` for a number in ``accepted``: a whole number (``1.5``
    and ``nan`` reach the check) or a float, the range appended to ``help`` (and the default,
    when there is one), refused at parse time with the one-line :class:`ConfigError`. The
    example in the refusal is ``example``, else the default."""
    text = f"{help}; {accepted.describe()}" if help else accepted.describe()
    if default is not None:
        text = with_default(text, default)
    return parser.add_argument(flag, type=_whole_number if accepted.whole else float, default=default, help=text,
                               action=Checked, accepted=accepted, example=default if example is None else example,
                               **kwargs)


def with_default(help_text: str, default: Any) -> str:
    """``help_text`` ending in ``(default: DEFAULT)``, the one place that appends it: not where the
    text says its default in its own words already (``"(default: the live version)"`` beside an
    empty string), nor for an empty string, which says nothing."""
    if "(default:" in help_text or default == "":
        return help_text
    return f"{help_text} (default: {default})"


def _whole_number(text: str) -> int | float:
    """``int(text)``; a number that is not whole (``1.5``, ``nan``, ``1e3``) comes back as a float,
    so that the field's check refuses it with its one line; not a number at all: argparse's own
    "invalid int value"."""
    try:
        return int(text)
    except ValueError:
        return float(text)


_whole_number.__name__ = "int"  # argparse names the type in its refusal: "invalid int value: 'x'"


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
        if "check" in f.metadata:
            help_text = f"{help_text}; {f.metadata['check'].describe()}"
        if "default" in options:
            help_text = with_default(help_text, options["default"])
        if hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = typing.get_args(hint)
            options.update(type=type(choices[0]), choices=choices)
        elif origin in (list, tuple):
            args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [str]
            options.update(type=args[0] if args[0] in _SCALARS else str, nargs="*")
        elif hint is int and getattr(f.metadata.get("check"), "whole", False):
            options["type"] = _whole_number  # "1.5" reaches the check, which names the range
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
        made = cls(**values)
        check_fields(made)  # (a checked dataclass calls it in __post_init__ too; this one may not)
        return made
    except AuditstreamError:
        raise
    except ValueError as e:  # the dataclass's own check (__post_init__): a message, not a traceback
        raise BadArguments(str(e)) from None
