"""``auditstream tune``: a real (tiny) Optuna study on digits that prunes and puts its summary on
the card, a resumable study, the refusals, and the validation data's isolation from the
calibration and test data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from auditstream.cli import main as cli_main
from auditstream.errors import TuneRefused
from auditstream.registry import ModelRegistry
from training.data.envelopes import make_envelopes
from training.data.split import load_split
from training.digits.args import SEARCH_SPACE as DIGITS_SPACE, DigitsArgs
from training.digits.cli import COMMAND as DIGITS
from training.tuning.args import TuneArgs
from training.tuning.space import Choice, FloatRange, check_space
from training.tuning.study import tune
from training.zip_reader import train as zip_reader
from training.zip_reader.args import ZipReaderArgs


def test_validation_digits_come_from_the_training_split_only() -> None:
    train, fit, validation = (set(load_split(n).indices.tolist()) for n in ("train", "train/fit", "train/validation"))
    calibration, test = (set(load_split(n).indices.tolist()) for n in ("calibration", "test"))
    assert fit | validation == train and not fit & validation
    assert not validation & calibration and not validation & test
    assert len(validation) == 137  # 15% of each digit's 89-90 training images
    # Every label is in the validation slice about as often as in the training split.
    counts = np.bincount(load_split("train/validation").labels, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 14
    # The zip-reader's validation envelopes are written with validation digits only.
    _, _, sources = make_envelopes("train/validation", 200, seed=7004, with_sources=True)
    assert set(sources.ravel().tolist()) <= validation


def test_a_tiny_study_on_digits_prunes_and_its_summary_is_on_the_card(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path))
    assert cli_main(["tune", "digits", "--trials", "6", "--epochs", "4", "--startup-trials", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tuning = summary["tuning"]
    assert tuning["trials"] == 6 and tuning["complete"] + tuning["pruned"] + tuning["failed"] == 6
    assert tuning["pruned"] >= 1 and tuning["complete"] >= 2  # the two startup trials are never pruned
    pruned = [t for t in tuning["history"] if t["state"] == "PRUNED"]
    assert all(t["checks"] < 4 for t in pruned)  # stopped before its last epoch: pruning saved work
    complete = [t for t in tuning["history"] if t["state"] == "COMPLETE"]
    assert tuning["best_value"] == min(t["value"] for t in complete)
    assert tuning["sampler"] == {"name": "TPESampler", "seed": 0, "n_startup_trials": 2}
    assert set(tuning["search_space"]) == set(DIGITS_SPACE) and "train/validation" in tuning["metric"]
    card = ModelRegistry(tmp_path).load("digits").card
    assert card.training["tuning"] == tuning
    assert all(card.training["args"][k] == v for k, v in tuning["best_params"].items())  # trained with the best
    assert card.training["args"]["epochs"] == 4 and summary["test_error"] < 0.2


def test_a_stored_study_resumes_and_belongs_to_one_family(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    args = DigitsArgs(epochs=1, publish=False)
    first = tune(DIGITS, args, TuneArgs(trials=2, storage=storage, startup_trials=1), tmp_path, progress=False)
    again = tune(DIGITS, args, TuneArgs(trials=2, storage=storage, startup_trials=1), tmp_path, progress=False)
    assert first["tuning"]["trials"] == 2 and again["tuning"]["trials"] == 4
    assert again["tuning"]["trials_this_run"] == 2 and again["tuning"]["storage"].startswith("sqlite:///")
    from training.zip_reader.cli import COMMAND as ZIP_READER

    with pytest.raises(TuneRefused, match="belongs to 'digits'"):
        tune(ZIP_READER, ZipReaderArgs(steps=2, publish=False), TuneArgs(trials=1, storage=storage,
                                                                          study_name="tune-digits"), tmp_path)


@pytest.mark.parametrize("family", ["detector", "captioner"])
def test_families_without_a_validation_metric_refuse_and_say_why(family, capsys) -> None:
    assert cli_main(["tune", family, "--trials", "1"]) == 2
    error = capsys.readouterr().err
    assert f"auditstream tune {family}: its training reports no validation metric" in error
    assert "tune digits or zip-reader" in error


@pytest.mark.parametrize("family", ["digits", "zip-reader"])
def test_a_train_fraction_below_1_is_refused_before_any_trial(family, tmp_path, monkeypatch, capsys) -> None:
    """Trials fit on all of train/fit, so --train-fraction would shrink the final model's data only:
    the search would tune for other data than the published model trains on. One line, exit 2,
    nothing trained or published."""
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path))
    assert cli_main(["tune", family, "--trials", "1", "--train-fraction", "0.1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"auditstream tune {family}: --train-fraction 0.1 cannot be tuned for" in error
    assert "train/fit" in error and f"auditstream train {family} --train-fraction 0.1" in error
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("storage, says", [
    ("sqlite:///nonexist/dir/t.db", "an SQLite file in a folder that exists"),
    ("postgres://x", "postgresql+psycopg://USER@HOST/DB (SQLAlchemy does not know postgres://)"),
    ("foo.db", "(a file is given as sqlite:///foo.db)"),
    ("mysql://u:secret@h/db", "needs MySQLdb"),
    ("sqlite:///{tmp}", "is a folder"),
])
def test_a_storage_optuna_cannot_use_is_refused_before_any_trial(storage, says, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    """Before, each ended in a SQLAlchemy traceback (OperationalError, NoSuchModuleError,
    ArgumentError). One line naming --storage (its password hidden), exit 2, nothing trained."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("training.tuning.study.tune", lambda *a, **k: pytest.fail("the study started"))
    assert cli_main(["tune", "digits", "--trials", "1", "--storage", storage.format(tmp=tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("auditstream: error: invalid --storage="), error
    assert says in error and "secret" not in error


def test_a_storage_that_fails_when_opened_is_one_line(tmp_path, capsys) -> None:
    """What only the database can tell (here: the file is no database) is one TuneRefused line."""
    (tmp_path / "notes.txt").write_text("not a database, " * 100)
    storage = f"sqlite:///{tmp_path / 'notes.txt'}"
    with pytest.raises(TuneRefused, match=r"--storage sqlite:///.*notes.txt failed: DatabaseError: .*file is not a "
                                          r"database.*give another --storage"):
        tune(DIGITS, DigitsArgs(epochs=1, publish=False), TuneArgs(trials=1, storage=storage), tmp_path,
             progress=False)


def test_a_zip_reader_trial_reports_its_validation_loss_at_every_check() -> None:
    values: list[tuple[int, float]] = []
    last = zip_reader.validation_trial(ZipReaderArgs(steps=16, batch_size=8), lambda i, v: values.append((i, v)))
    assert [i for i, _ in values] == list(range(1, zip_reader.VALIDATION_CHECKS + 1))
    assert all(math.isfinite(v) and v > 0 for _, v in values) and last == values[-1][1]


def test_search_space_declarations_are_checked() -> None:
    check_space(DIGITS_SPACE, DigitsArgs)
    with pytest.raises(ValueError, match=r"\['dropout'\]"):
        check_space({"dropout": FloatRange(0.1, 0.5)}, DigitsArgs)
    for bad in (lambda: FloatRange(0.0, 1.0, log=True), lambda: FloatRange(2.0, 1.0), lambda: Choice((64,))):
        with pytest.raises(ValueError):
            bad()


def test_every_search_space_draws_only_what_its_arguments_accept() -> None:
    """A trial never starts with a value ``auditstream train`` would refuse (a width the attention
    heads do not split, a batch size of 0, a learning rate outside its range)."""
    import importlib

    from training.cli import FAMILY_MODULES

    commands = [m.COMMAND for m in map(importlib.import_module, FAMILY_MODULES) if hasattr(m, "COMMAND")]
    assert sum(c.search_space is not None for c in commands) >= 2
    for command in commands:
        if command.search_space is not None:
            check_space(command.search_space, command.args)
    with pytest.raises(ValueError, match="can draw 0, which DigitsArgs refuses"):
        check_space({"batch_size": Choice((0, 32))}, DigitsArgs)
    with pytest.raises(ValueError, match="can draw 1.5, which DigitsArgs refuses"):
        check_space({"target_risk": FloatRange(0.5, 1.5)}, DigitsArgs)
    with pytest.raises(ValueError, match="train_fraction, which no trial uses"):
        check_space({"train_fraction": FloatRange(0.1, 1.0)}, DigitsArgs)
    from training.captioner.args import CaptionerArgs

    with pytest.raises(ValueError, match="can draw 50, which CaptionerArgs refuses"):
        check_space({"width": Choice((48, 50))}, CaptionerArgs)
