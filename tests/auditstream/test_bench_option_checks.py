"""Numeric options of ``auditstream monitor`` and the ``auditstream bench`` commands, through the
real entry point: a NaN, an infinity, a negative or a fraction where a whole number is due ends
in exactly one ``auditstream: error: invalid --OPTION=VALUE: expected ...`` line and exit code 2,
before any work starts. Before, these were accepted (a bench ran with ``--confidence nan`` or
``--seed -1`` until numpy refused it, a soak of ``--soak-s inf`` never ended, ``monitor
--outbox-interval-s inf`` never published) or refused by a later check under another option's
name (``bench loop --digits-seed-fraction 0`` as ``--train-fraction``).

Named choices the same way: ``rl train-offline --algorithm`` and ``--ope-human-steps`` and ``bench
faults --serve-log-level``. Before, a bad one failed only in the work: an unknown algorithm after
the dataset was read, an unknown OPE mode after training, a bad log level when the bench's first
consumer started, after its broker."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from auditstream.cli import main
from auditstream.errors import ConfigError
from auditstream.settings import LOG_LEVELS
from auditstream.cli_args import COUNT, FRACTION, POSITIVE, PROBABILITY, SHARE, _whole_number
from tests.monitor.test_cli_errors import UNREACHABLE_POSTGRES

CASES = [
    # monitor: the store URL nobody answers proves the refusal comes before the store is opened
    (["monitor", "--double-review-rate", "nan"], "--double-review-rate=nan", "a number from 0 to 1"),
    (["monitor", "--double-review-rate", "-0.1"], "--double-review-rate=-0.1", "a number from 0 to 1"),
    (["monitor", "--double-review-rate", "inf"], "--double-review-rate=inf", "a number from 0 to 1"),
    (["monitor", "--outbox-interval-s", "inf"], "--outbox-interval-s=inf", "a finite number > 0"),
    # certify: counts, probabilities, seeds
    (["bench", "certify", "--delta", "nan"], "--delta=nan", "strictly between 0 and 1"),
    (["bench", "certify", "--target-risk", "1e999"], "--target-risk=inf", "strictly between 0 and 1"),
    (["bench", "certify", "--splits", "0"], "--splits=0", "a whole number >= 1"),
    (["bench", "certify", "--seed", "-1"], "--seed=-1", "a whole number from 0 to 4294967295"),
    # ope / overrides / offline
    (["bench", "ope", "--confidence", "nan"], "--confidence=nan", "strictly between 0 and 1"),
    (["bench", "ope", "--gamma", "0"], "--gamma=0.0", "a number > 0 and <= 1"),
    (["bench", "ope", "--behaviour-epsilon", "-0.3"], "--behaviour-epsilon=-0.3", "a number > 0 and <= 1"),
    (["bench", "ope", "--trials", "2.5"], "--trials=2.5", "a whole number >= 1"),
    (["bench", "overrides", "--defer-rate", "inf"], "--defer-rate=inf", "strictly between 0 and 1"),
    (["bench", "overrides", "--human-weight", "-5"], "--human-weight=-5.0", "a finite number > 0"),
    (["bench", "overrides", "--human-weight", "0"], "--human-weight=0.0", "a finite number > 0"),  # BC refuses 0
    (["bench", "overrides", "--demo-episodes", "-1"], "--demo-episodes=-1", "a whole number >= 0"),
    (["bench", "offline", "--good-epsilon", "1.5"], "--good-epsilon=1.5", "a number from 0 to 1"),
    (["bench", "offline", "--cql-alpha", "nan"], "--cql-alpha=nan", "a finite number >= 0"),
    (["bench", "offline", "--seeds", "0"], "--seeds=0", "a whole number >= 2"),
    # loop: its own option names, also for what it passes on to the digits and zip-reader jobs
    (["bench", "loop", "--digits-seed-fraction", "0"], "--digits-seed-fraction=0.0", "a number > 0 and <= 1"),
    (["bench", "loop", "--digits-seed-fraction", "nan"], "--digits-seed-fraction=nan", "a number > 0 and <= 1"),
    (["bench", "loop", "--zip-seed-fraction", "2"], "--zip-seed-fraction=2.0", "a number > 0 and <= 1"),
    (["bench", "loop", "--digits-seed-epochs", "0"], "--digits-seed-epochs=0", "a whole number >= 1"),
    (["bench", "loop", "--auditor-error", "0.5"], "--auditor-error=0.5", "a number >= 0 and < 0.5"),
    (["bench", "loop", "--promote-delta", "inf"], "--promote-delta=inf", "strictly between 0 and 1"),
    (["bench", "loop", "--gold-items", "-1"], "--gold-items=-1", "a whole number >= 0"),
    (["bench", "loop", "--reach-qc-rates", "0.02,nan"], "--reach-qc-rates=nan", "a number > 0 and <= 1"),
    (["bench", "loop", "--reach-requests", "2500,lots"], "--reach-requests='lots'", "a whole number >= 1"),
    (["bench", "loop", "--models", "digits,nope"], "--models='digits,nope'", "digits, zip-reader"),
    # serve / qc / faults
    (["bench", "serve", "--batch-size", "0"], "--batch-size=0", "a whole number >= 1"),
    (["bench", "serve", "--workers", "nan"], "--workers=nan", "a whole number >= 1"),
    (["bench", "qc", "--replications", "-8000"], "--replications=-8000", "a whole number >= 1"),
    (["bench", "qc", "--seed", "1e30"], "--seed=1e+30", "a whole number from 0 to 4294967295"),
    (["bench", "faults", "--rate-per-s", "nan"], "--rate-per-s=nan", "a finite number > 0"),
    (["bench", "faults", "--soak-s", "inf"], "--soak-s=inf", "a finite number > 0"),
    (["bench", "faults", "--soak-share", "0"], "--soak-share=0.0", "a number > 0 and <= 1"),
    (["bench", "faults", "--soak-warmup-s", "-1"], "--soak-warmup-s=-1.0", "a finite number >= 0"),
]  # fmt: skip


def refusal(argv: list[str], capsys) -> tuple[int, str]:
    if argv[0] == "monitor":
        argv = argv + ["--store-url", UNREACHABLE_POSTGRES]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusal would be a usage block, not the one line
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, shown, expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_number_is_one_line_naming_the_option_and_exit_2(argv, shown, expected, capsys) -> None:
    code, err = refusal(argv, capsys)
    assert code == 2, err
    assert err.splitlines() == [err.strip()] and "Traceback" not in err, err  # one line, nothing else
    assert err.startswith(f"auditstream: error: invalid {shown}: expected ") and expected in err, err


CHOICES = [
    (["rl", "train-offline", "--algorithm", "ppo"], "--algorithm='ppo'", "bc or cql"),
    (["rl", "train-offline", "--algorithm", "BC"], "--algorithm='BC'", "bc or cql"),
    (["rl", "train-offline", "--ope-human-steps", "ignore"], "--ope-human-steps='ignore'",
     "as_logged, exclude or model"),
    (["bench", "faults", "--serve-log-level", "loud"], "--serve-log-level='loud'",
     "one of DEBUG, INFO, WARNING, WARN, ERROR, CRITICAL"),
    (["bench", "faults", "--serve-log-level", ""], "--serve-log-level=''", "one of DEBUG, INFO"),
]  # fmt: skip


@pytest.mark.parametrize("argv, shown, expected", CHOICES, ids=[" ".join(c[0]) for c in CHOICES])
def test_a_bad_choice_is_one_line_naming_the_option_before_the_work(argv, shown, expected, capsys,
                                                                    monkeypatch) -> None:
    for work in ("training.rl.offline_train.main", "stack.faults_bench.run_faults"):
        monkeypatch.setattr(work, lambda *a, **k: pytest.fail("the work started: the bad choice was not refused"))
    code, err = refusal(argv, capsys)
    assert code == 2, err
    assert err.splitlines() == [err.strip()] and "Traceback" not in err, err
    assert err.startswith(f"auditstream: error: invalid {shown}: expected ") and expected in err, err


def test_the_choices_are_what_the_work_takes() -> None:
    """Every algorithm, OPE mode and log level the work knows is accepted (log levels in any case,
    as the consumers' settings take them), and the lists are the work's own."""
    from stack.faults_bench import FaultsArgs
    from training.rl.args import OFFLINE_ALGORITHMS, OPE_HUMAN_STEPS, OfflineArgs
    from training.rl.offline_train import ALGORITHMS
    from training.rl.ope_humans import HUMAN_STEPS

    assert OFFLINE_ALGORITHMS == ALGORITHMS and OPE_HUMAN_STEPS == HUMAN_STEPS
    for algorithm in ALGORITHMS:
        for human_steps in HUMAN_STEPS:
            OfflineArgs(algorithm=algorithm, ope_human_steps=human_steps)  # a refusal raises
    for level in LOG_LEVELS + ("debug", "Info"):
        assert FaultsArgs(serve_log_level=level).serve_log_level == level
    with pytest.raises(ConfigError, match="--serve-log-level"):
        FaultsArgs(serve_log_level="NOTSET")  # a name logging knows, but no level the settings take


BENCH_OPTIONS = {  # one checked option per command, with the range it is declared with
    ("bench", "certify"): ("--delta", PROBABILITY), ("bench", "ope"): ("--gamma", FRACTION),
    ("bench", "overrides"): ("--defer-rate", PROBABILITY), ("bench", "offline"): ("--good-epsilon", SHARE),
    ("bench", "loop"): ("--qc-rate", FRACTION), ("bench", "qc"): ("--stream-items", COUNT),
    ("bench", "serve"): ("--count", COUNT), ("bench", "faults"): ("--kill-every-s", POSITIVE),
    ("monitor",): ("--double-review-rate", SHARE),
}
HOSTILE = st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "-1e999", "-1", "-0.5", "1e308", "-0"])


@settings(max_examples=40, deadline=None)
@given(command=st.sampled_from(sorted(BENCH_OPTIONS)), value=HOSTILE)
def test_hostile_numbers_never_reach_the_work(command, value) -> None:
    """NaN, infinities, negatives and 1e308 on an option of each command: refused in one line
    naming it, never run."""
    option, accepted = BENCH_OPTIONS[command]
    # -0 is a share of 0, 1e308 seconds a finite (if long) interval: where the range takes the
    # value, the command would run, so it is left out
    assume(not accepted.accepts(_whole_number(value) if accepted.whole else float(value)))
    argv = list(command) + [f"{option}={value}"]
    if command == ("monitor",):
        argv += ["--store-url", UNREACHABLE_POSTGRES]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    text = err.getvalue()
    assert code == 2 and text.startswith(f"auditstream: error: invalid {option}="), text
    assert len(text.strip().splitlines()) == 1, text
