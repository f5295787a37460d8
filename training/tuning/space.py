"""The vocabulary of a search space, declared next to each family's arguments (``SEARCH_SPACE`` in
``training/<family>/args.py``): a mapping from an argument's name to the range Optuna draws it
from. Pure Python, so ``args.py`` stays importable without Optuna or torch; only
:meth:`suggest` touches an Optuna trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class FloatRange:
    """A float in [low, high]; ``log``: drawn uniformly on a log scale (learning rates, decays)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"FloatRange({self.low}, {self.high}, log={self.log}): need low < high (and low > 0 "
                             f"on a log scale)")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> dict:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Choice:
    """One of a few values (batch sizes, switches, widths)."""

    values: tuple

    def __post_init__(self) -> None:
        if len(self.values) < 2:
            raise ValueError(f"Choice{self.values}: need at least two values")

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def describe(self) -> dict:
        return {"type": "choice", "values": list(self.values)}


Range = FloatRange | Choice


def check_space(space: Mapping[str, Range], args_type: type) -> None:
    """Every name in ``space`` must be a field of the family's arguments dataclass, and every value
    it can draw (a choice, an end of a range) one that the arguments accept (their checks: the
    field's range, the dataclass's own rules such as the captioner's width being a multiple of 4).
    ``train_fraction`` is never searched: a trial fits on all of ``train/fit`` whatever it is."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(args_type)}
    unknown = sorted(set(space) - fields)
    if unknown:
        raise ValueError(f"search space names {unknown} that {args_type.__name__} has no field for; "
                         f"its fields: {sorted(fields)}")
    if "train_fraction" in space:  # trials fit on all of train/fit whatever it draws (study.py)
        raise ValueError("search space names train_fraction, which no trial uses: trials fit on all of train/fit")
    for name, drawn in space.items():
        for value in drawn.values if isinstance(drawn, Choice) else (drawn.low, drawn.high):
            try:
                args_type(**{name: value})
            except ValueError as e:  # ConfigError and BadArguments are ValueErrors
                raise ValueError(f"search space {name}: {drawn.describe()} can draw {value!r}, which "
                                 f"{args_type.__name__} refuses ({e})") from None


def describe_space(space: Mapping[str, Range]) -> dict[str, dict]:
    """The space as JSON for the card."""
    return {name: r.describe() for name, r in space.items()}
