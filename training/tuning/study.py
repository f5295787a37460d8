"""``auditstream tune FAMILY --trials N``: search the family's hyperparameters with Optuna, then
train, calibrate, certify and publish the model with the best ones.

    auditstream tune digits --trials 30 --json                      # ~3-5 min on 2 CPU cores
    auditstream tune zip-reader --trials 12 --steps 600 --storage sqlite:///tune.db   # resumable

Flow: the family's ``SEARCH_SPACE`` (``training/<family>/args.py``) -> a study (TPE sampler,
seeded; median pruner) -> each trial draws its parameters, overrides them on the family's
arguments and runs the family's ``validation_trial``: it fits on the training data minus a
validation part carved from it (``train/fit``, training/data/split.py) and reports the
validation metric (``train/validation``) at every check, where the pruner may stop it ->
the best trial's parameters -> the family's ``run`` on the whole training split, whose card
carries the study's summary (``training.tuning``).

Why validation data carved from the training split: the calibration data certify the
auto-accept threshold, and a certificate is only exact on data that chose nothing about the
model; the test data only measure. So neither may rank trials or prune them.

``--train-fraction`` below 1 is refused (:func:`refuse_train_fraction`): every trial fits on
all of ``train/fit``, so a fraction would shrink only the final model's data, and its
hyperparameters would have been chosen for another data size. A small seed model is trained with
``auditstream train FAMILY --train-fraction`` instead.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from auditstream import finite_json
from auditstream.errors import TrainingDiverged, TuneRefused
from training.tuning.args import TuneArgs, redacted_storage
from training.tuning.space import check_space, describe_space


def tune(command: Any, base_args: Any, tune_args: TuneArgs, models_dir: Path, progress: bool = True) -> dict:
    """Run the study for ``command`` (a family's :class:`~training.family_cli.TrainCommand`),
    then train and publish with the best parameters; returns the final run's summary with the
    study's under ``tuning``."""
    refuse_train_fraction(command, base_args)
    import optuna

    if not command.search_space:
        raise TuneRefused(command.name, command.not_tunable or "the family declares no search space")
    check_space(command.search_space, command.args)
    script = importlib.import_module(f"{command.package}.train")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what matters
    with storage_errors(command.name, tune_args.storage):
        study = optuna.create_study(
            storage=tune_args.storage or None, study_name=tune_args.study_name or f"tune-{command.name}",
            direction="minimize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=tune_args.study_seed, n_startup_trials=tune_args.startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=tune_args.startup_trials,
                                               n_warmup_steps=tune_args.warmup_checks))
        _claim(study, command.name, script.VALIDATION_METRIC)
        before = len(study.trials)
    bar = tqdm(total=tune_args.trials, desc=f"tune {command.name}", unit="trial", disable=not progress,
               file=sys.stderr)

    def objective(trial: optuna.Trial) -> float:
        params = {name: r.suggest(trial, name) for name, r in command.search_space.items()}

        def report(check: int, value: float) -> None:
            trial.report(value, check)
            bar.set_postfix(trial=trial.number, check=check, value=f"{value:.4f}")
            if trial.should_prune():
                raise optuna.TrialPruned(f"check {check}: {value:.4f} worse than the median of earlier trials")

        return script.validation_trial(replace(base_args, **params, publish=False), report)

    def finished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        states = [t.state for t in study.trials[before:]]
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        bar.update(1)
        bar.set_postfix(best=f"{study.best_value:.4f}" if complete else "-",
                        pruned=states.count(optuna.trial.TrialState.PRUNED), refresh=True)

    start = time.perf_counter()
    # A trial whose loss diverges (a learning rate too high) fails alone; the search goes on.
    with storage_errors(command.name, tune_args.storage):
        study.optimize(objective, n_trials=tune_args.trials, timeout=tune_args.timeout_s, callbacks=[finished],
                       catch=(TrainingDiverged,))
    bar.close()
    summary = study_summary(study, command, script.VALIDATION_METRIC, tune_args, time.perf_counter() - start,
                            len(study.trials) - before)
    if summary["complete"] == 0:
        raise TuneRefused(command.name, f"no trial finished ({summary['pruned']} pruned, {summary['failed']} failed); "
                                        f"run more trials or narrow the search space in training/*/args.py")
    best_args = replace(base_args, **summary["best_params"])
    return {**script.run(best_args, models_dir, progress, tuning=summary), "tuning": summary}


def refuse_train_fraction(command: Any, base_args: Any) -> None:
    """:class:`TuneRefused` when ``base_args`` ask for a ``train_fraction`` below 1: trials fit on
    all of ``train/fit`` (and ``validation_trial`` takes no fraction), only the final model would
    use the fraction -- a search for another model than the one it publishes."""
    fraction = getattr(base_args, "train_fraction", 1.0)
    if fraction != 1.0:
        raise TuneRefused(command.name, f"--train-fraction {fraction:g} cannot be tuned for: every trial fits on all "
                                        f"of train/fit, so only the final model would train on the fraction; tune "
                                        f"without it, or train a seed with auditstream train {command.name} "
                                        f"--train-fraction {fraction:g}")


def _claim(study: Any, family: str, metric: str) -> None:
    """A stored study belongs to one family and one metric: resuming another family's is refused."""
    owner = study.user_attrs.get("family")
    if owner is None:
        study.set_user_attr("family", family)
        study.set_user_attr("metric", metric)
    elif owner != family or study.user_attrs.get("metric") != metric:
        raise TuneRefused(family, f"study {study.study_name!r} in the storage belongs to {owner!r} "
                                  f"({study.user_attrs.get('metric')}); choose another --study-name")


def study_summary(study: Any, command: Any, metric: str, tune_args: TuneArgs, seconds: float, ran: int) -> dict:
    """What the card and ``--json`` say about the search (every trial of the study, resumed ones too)."""
    import optuna

    state = optuna.trial.TrialState
    trials = [t for t in study.trials if t.state != state.RUNNING]
    count = {s: sum(t.state == s for t in trials) for s in (state.COMPLETE, state.PRUNED, state.FAIL)}
    best = study.best_trial if count[state.COMPLETE] else None
    return {
        "metric": metric, "direction": "minimize", "study_name": study.study_name,
        "best_value": best.value if best else None, "best_params": dict(best.params) if best else {},
        "best_trial": best.number if best else None,
        "trials": len(trials), "trials_this_run": ran, "complete": count[state.COMPLETE],
        "pruned": count[state.PRUNED], "failed": count[state.FAIL],
        "sampler": {"name": "TPESampler", "seed": tune_args.study_seed, "n_startup_trials": tune_args.startup_trials},
        "pruner": {"name": "MedianPruner", "n_startup_trials": tune_args.startup_trials,
                   "n_warmup_steps": tune_args.warmup_checks},
        "search_space": describe_space(command.search_space),
        "seconds": seconds, "timeout_s": tune_args.timeout_s, "storage": _redacted(tune_args.storage),
        "optuna_version": optuna.__version__,
        "history": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "checks": len(t.intermediate_values)} for t in trials],
    }


_redacted = redacted_storage  # a card is no place for secrets


@contextlib.contextmanager
def storage_errors(family: str, storage: str) -> Iterator[None]:
    """What the study's storage raises (a database that is down, a file that is no database, a
    full disk, another Optuna's schema) as one :class:`TuneRefused` line naming ``--storage``."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, StorageInternalError) as e:
        cause = e.__cause__ if isinstance(e, StorageInternalError) and e.__cause__ is not None else e
        text = " ".join(str(cause).split("(Background on this error")[0].split())
        raise TuneRefused(family, f"--storage {redacted_storage(storage)} failed: {type(cause).__name__}: "
                                  f"{text[:300]}; check the database (or give another --storage, e.g. "
                                  "sqlite:///tune.db)") from None


def print_tuning(t: dict) -> None:
    print(f"tuning: {t['trials']} trials ({t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed; "
          f"{t['trials_this_run']} in {t['seconds']:.0f} s), TPE seed {t['sampler']['seed']}, median pruner")
    print(f"  best {t['metric']}: {t['best_value']:.4f} (trial {t['best_trial']}) with "
          + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["best_params"].items()))


def main(command: Any, base_args: Any, tune_args: TuneArgs, as_json: bool) -> int:

    from auditstream.settings import Settings

    summary = tune(command, base_args, tune_args, Settings.from_env().models_dir)
    importlib.import_module(f"{command.package}.train").print_summary(summary)
    print_tuning(summary["tuning"])
    if as_json:
        finite_json.print_summary(summary, sort_keys=True)
    return 0
