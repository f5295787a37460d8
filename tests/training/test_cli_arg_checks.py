"""A bad number on a training command line gets one line that names the option and says what to
give, and exit 2, before any work starts: ``auditstream train FAMILY``, ``auditstream tune
FAMILY``, ``auditstream rl train-offline``, ``auditstream rl promote``, ``auditstream retrain``,
``auditstream certify`` and ``python -m training.FAMILY.train``. The checks are declared on the
arguments dataclasses' fields (auditstream/cli_args.py); argparse's ``float`` lets ``nan``, ``inf`` and ``1e999`` through, so
they are the hostile values here.

The scripts that would do the work are replaced by stand-ins that fail the test if they are
reached, so a value that slipped through shows up at once instead of as a training run."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from auditstream.cli import main

REPO = Path(__file__).resolve().parents[2]

# The modules that do the work; none may be reached with a bad argument.
WORK_MODULES = ("training.digits.train", "training.zip_reader.train", "training.detector.train",
                "training.captioner.train", "training.rl.ppo", "training.rl.offline_train", "training.tuning.study")


class WorkStarted(AssertionError):
    pass


def _refuse(*args: object, **kwargs: object) -> None:
    raise WorkStarted("a bad argument reached the training code")


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WORK_MODULES:
        stand_in = types.ModuleType(name)
        stand_in.main = stand_in.run = stand_in.train = _refuse  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, stand_in)
    import stack.learning_cli
    import training.retrain
    import training.rl.env_driver
    import training.rl.shadow

    import stack.recertify

    monkeypatch.setattr(training.rl.shadow, "promote", _refuse)
    monkeypatch.setattr(training.rl.env_driver, "run", _refuse)
    monkeypatch.setattr(stack.recertify, "main", _refuse)
    monkeypatch.setattr(training.retrain, "main", _refuse)
    monkeypatch.setattr(training.retrain, "run", _refuse)
    monkeypatch.setattr(stack.learning_cli, "export_for_retraining", _refuse)


def _one_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the real entry point; the single ``auditstream: error:`` line it printed (exit 2)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auditstream: error: "), err
    return lines[0]


# One representative bad value of each kind of option, per command: (argv, option, what it must say).
CASES = [
    # learning rate: NaN, infinite (1e999 parses as inf), negative, zero
    (["train", "digits", "--lr", "nan"], "--lr", "> 0"),
    (["train", "zip-reader", "--lr", "1e999"], "--lr", "> 0"),
    (["train", "detector", "--lr", "-0.003"], "--lr", "> 0"),
    (["train", "captioner", "--lr", "0"], "--lr", "> 0"),
    (["train", "digits", "--weight-decay=-inf"], "--weight-decay", ">= 0"),  # "-inf" alone reads as an option
    # epochs, steps, batch size, sample counts, threads: whole numbers >= 1
    (["train", "digits", "--epochs", "0"], "--epochs", ">= 1"),
    (["train", "digits", "--epochs", "1.5"], "--epochs", "a whole number >= 1"),
    (["train", "policy", "--num-envs", "nan"], "--num-envs", "a whole number >= 1"),
    (["train", "zip-reader", "--steps", "-5"], "--steps", ">= 1"),
    (["train", "detector", "--batch-size", "0"], "--batch-size", ">= 1"),
    (["train", "zip-reader", "--n-test", "0"], "--n-test", ">= 1"),
    (["train", "digits", "--threads", "0"], "--threads", ">= 1"),
    (["train", "captioner", "--max-objects", "7"], "--max-objects", "from 2 to 6"),
    # the captioner's width: its 4 attention heads split it (6 failed in the model, 2 in its first convolution)
    (["train", "captioner", "--width", "6"], "--width", "a multiple of 4"),
    (["train", "captioner", "--width", "2"], "--width", ">= 4"),
    (["tune", "captioner", "--width", "10"], "--width", "a multiple of 4"),
    # delta and risk targets: strictly between 0 and 1
    (["train", "digits", "--delta", "1"], "--delta", "strictly between 0 and 1"),
    (["train", "zip-reader", "--delta", "nan"], "--delta", "strictly between 0 and 1"),
    (["train", "captioner", "--delta", "0"], "--delta", "strictly between 0 and 1"),
    (["train", "digits", "--target-risk", "0"], "--target-risk", "strictly between 0 and 1"),
    (["train", "detector", "--target-fdr", "1.5"], "--target-fdr", "strictly between 0 and 1"),
    (["train", "detector", "--target-miss", "inf"], "--target-miss", "strictly between 0 and 1"),
    # fractions and shares
    (["train", "digits", "--train-fraction", "0"], "--train-fraction", "> 0 and <= 1"),
    (["train", "zip-reader", "--train-fraction", "1.01"], "--train-fraction", "> 0 and <= 1"),
    (["train", "detector", "--hard-share", "-0.1"], "--hard-share", "from 0 to 1"),
    (["train", "detector", "--match-iou", "0"], "--match-iou", "> 0 and <= 1"),
    (["train", "detector", "--elastic", "nan"], "--elastic", ">= 0"),
    # seeds: numpy refuses negative ones deep inside training
    (["train", "digits", "--seed", "-1"], "--seed", "from 0 to 4294967295"),
    (["train", "detector", "--seed", str(2**64)], "--seed", "from 0 to 4294967295"),
    # reinforcement learning
    (["train", "policy", "--learning-rate", "nan"], "--learning-rate", "> 0"),
    (["train", "policy", "--gamma", "0"], "--gamma", "> 0 and <= 1"),
    (["train", "policy", "--defer-rate", "1"], "--defer-rate", ">= 0 and < 1"),
    (["train", "policy", "--total-timesteps", "0"], "--total-timesteps", ">= 1"),
    (["rl", "train-offline", "--policy-temperature", "0"], "--policy-temperature", "> 0"),
    (["rl", "train-offline", "--cql-alpha", "-1"], "--cql-alpha", ">= 0"),
    # environment ids: Gymnasium's NameNotFound traceback before (train-offline's after training)
    (["train", "policy", "--env", "Foo-v1"], "--env", "Gymnasium environment id this install can make"),
    (["train", "policy", "--env", "LunarLander-v2"], "--env", "Please use `LunarLander-v3` instead"),
    (["train", "policy", "--env", "Pendulum-v1"], "--env", "an environment with discrete actions"),
    (["train", "policy", "--device", "gpu"], "--device", "auto, cpu, cuda or cuda:N"),
    (["rl", "train-offline", "--env", "Foo-v1"], "--env", "Gymnasium environment id this install can make"),
    (["rl", "run", "--env", "Foo-v1"], "--env", "Gymnasium environment id this install can make"),
    # 0 would leave a minibatch of human-labelled steps without weight (bc.py refused it after the dataset loaded)
    (["rl", "train-offline", "--algorithm", "bc", "--human-weight", "0"], "--human-weight", "a finite number > 0"),
    # certify from audits: its own delta, target and start
    (["certify", "--model", "digits", "--from-audits", "--delta", "nan"], "--delta", "strictly between 0 and 1"),
    (["certify", "--model", "digits", "--from-audits", "--target-risk", "1"], "--target-risk", ">= 0 and < 1"),
    (["certify", "--model", "digits", "--from-audits", "--start-coverage", "-0.5"], "--start-coverage", "from 0 to 1"),
    # rl promote: the gate's numbers, before the shadow pass starts
    (["rl", "promote", "--candidate", "p", "--live", "q", "--min-improvement", "nan"], "--min-improvement", ">= 0"),
    (["rl", "promote", "--candidate", "p", "--live", "q", "--confidence", "1"], "--confidence",
     "strictly between 0 and 1"),
    (["rl", "promote", "--candidate", "p", "--live", "q", "--shadow-idle-s", "inf"], "--shadow-idle-s", "> 0"),
    # OPE refused fewer than 20 resamples after the whole shadow pass
    (["rl", "promote", "--candidate", "p", "--live", "q", "--bootstrap", "5"], "--bootstrap", ">= 20"),
    # tuning: the family's own options and the search's
    (["tune", "digits", "--lr", "inf"], "--lr", "> 0"),
    (["tune", "digits", "--timeout-s", "nan"], "--timeout-s", "> 0"),
    # retrain: 0 means "the default" for epochs, steps, lr and seed, but nothing below it
    (["retrain", "--model", "digits", "--lr", "nan"], "--lr", ">= 0"),
    (["retrain", "--model", "digits", "--lr", "-0.001"], "--lr", ">= 0"),
    (["retrain", "--model", "digits", "--epochs", "-1"], "--epochs", ">= 0"),
    (["retrain", "--model", "zip-reader", "--steps", "-300"], "--steps", ">= 0"),
    (["retrain", "--model", "digits", "--seed", "-7"], "--seed", "from 0 to 4294967295"),
    (["retrain", "--model", "digits", "--certify-share", "1"], "--certify-share", ">= 0 and < 1"),
    (["retrain", "--model", "digits", "--certify-share", "nan"], "--certify-share", ">= 0 and < 1"),
]


@pytest.mark.parametrize("argv, option, says", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_training_option_is_one_line_before_any_work(argv: list[str], option: str, says: str, no_work,
                                                           capsys) -> None:  # fmt: skip
    line = _one_line(capsys, argv)
    assert f"invalid {option}=" in line and says in line, line
    assert "e.g." in line or f"leave {option} out for the preset" in line, line  # what to give


def test_a_rollout_that_does_not_split_is_one_line_before_any_work(no_work, capsys) -> None:
    line = _one_line(capsys, ["train", "policy", "--num-envs", "3", "--num-steps", "5", "--num-minibatches", "2"])
    assert "--num-minibatches 2" in line and "divisor of 15" in line, line


def test_python_m_train_turns_a_bad_argument_into_the_same_line(capsys) -> None:
    """``python -m training.FAMILY.train`` parses with ``TrainCommand.parse``: no traceback."""
    from training.digits.cli import COMMAND

    with pytest.raises(SystemExit) as exited:
        COMMAND.parse(["--delta", "1.5"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "auditstream: error: invalid --delta=1.5: expected a number strictly between 0 and 1, e.g. 0.05"
    assert COMMAND.parse(["--delta", "0.1", "--json"])[0].delta == 0.1  # a good value still goes through


def test_the_retrain_override_that_the_card_turns_bad_is_refused_by_name(tmp_path: Path) -> None:
    """A card's recorded arguments plus this run's overrides are checked again (a library caller
    of ``family_args`` gets the same ConfigError the command line prints)."""
    from auditstream.errors import ConfigError
    from training.retrain import RetrainArgs, family_args, family_of

    class Card:
        training = {"args": {"lr": 4e-3, "epochs": 40, "seed": 1}}

    args = family_args(Card(), RetrainArgs(model="digits", lr=1e-3, epochs=3, seed=5), family_of("digits"))
    assert (args.lr, args.epochs, args.seed) == (1e-3, 3, 5)
    Card.training = {"args": {"delta": 2.0}}  # a hand-edited card
    with pytest.raises(ConfigError, match="invalid --delta=2.0"):
        family_args(Card(), RetrainArgs(model="digits"), family_of("digits"))


def test_the_delta_help_says_it_is_the_family_delta(capsys) -> None:
    for family in ("digits", "zip-reader"):
        with pytest.raises(SystemExit):
            main(["train", family, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "all versions certified on the certificate slice together fail with probability <= delta" in text
        assert "delta*6/(pi^2 k^2)" in text and "strictly between 0 and 1" in text


def test_the_installed_command_prints_one_line(tmp_path: Path) -> None:
    """What a person at a shell sees, through a real process (no torch is imported for it)."""
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "train", "digits", "--lr", "nan"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "auditstream: error: invalid --lr=nan: expected a finite number > 0, e.g. 0.004"


def test_a_cuda_device_on_a_host_without_one_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """``--device cuda`` on a CPU host was a ValueError traceback once torch had loaded."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    line = _one_line(capsys, ["train", "policy", "--device", "cuda:0", "--total-timesteps", "64", "--no-publish"])
    assert "--device" in line and "torch sees no CUDA device" in line
