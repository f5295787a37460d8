"""The command line's bad input: a one-line ``auditstream: error: ...`` on stderr and a non-zero
exit, never a traceback. Ports and addresses the dashboard cannot listen on, leases that are not
a finite positive number of seconds, promotion margins, deltas and canary shares out of range, and stores that cannot be reached (PostgreSQL nobody
answers, a SQLite path that cannot be created)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from auditstream.cli import main

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE_POSTGRES = "postgresql://auditor:s3cret@127.0.0.1:1/audit"  # nothing listens on port 1


def _run(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # run_dashboard's SIGTERM hook stays out of pytest
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own refusals
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    return code, err


def _one_clear_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("auditstream: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("port", ["0", "70000", "65536", "-1"])
def test_dashboard_refuses_a_port_it_cannot_listen_on(port: str, capsys, monkeypatch, tmp_path: Path) -> None:
    code, err = _run(capsys, monkeypatch, "dashboard", f"--port={port}", "--store-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert code != 0
    _one_clear_line(err, "invalid --port", "from 1 to 65535")


@pytest.mark.parametrize("address", ["999.1.1.1", "not an address", "no-such-host.invalid", " 127.0.0.1", ""])
def test_dashboard_refuses_an_address_it_cannot_listen_on(address: str, capsys, monkeypatch, tmp_path: Path) -> None:
    code, err = _run(capsys, monkeypatch, "dashboard", f"--address={address}", "--store-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert code != 0
    _one_clear_line(err, "invalid --address")


@pytest.mark.parametrize("lease", ["inf", "-inf", "nan", "0", "-5", "9", "1e9"])
def test_dashboard_refuses_a_lease_that_is_not_a_sane_number_of_seconds(lease: str, capsys, monkeypatch,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    code, err = _run(capsys, monkeypatch, "dashboard", f"--lease-s={lease}", "--store-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert code != 0
    _one_clear_line(err, "invalid --lease-s")


@pytest.mark.parametrize("refresh", ["inf", "nan", "-1"])
def test_dashboard_refuses_a_refresh_that_is_not_finite(refresh: str, capsys, monkeypatch, tmp_path: Path) -> None:
    code, err = _run(capsys, monkeypatch, "dashboard", f"--refresh-s={refresh}", "--store-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert code != 0
    _one_clear_line(err, "invalid --refresh-s")


@pytest.mark.parametrize("option, value, says", [
    ("--margin", "nan", "strictly between 0 and 1"),
    ("--margin", "0", "strictly between 0 and 1"),
    ("--margin", "1e999", "strictly between 0 and 1"),
    ("--delta", "1", "strictly between 0 and 1"),
    ("--delta", "-0.05", "strictly between 0 and 1"),
    ("--delta", "inf", "strictly between 0 and 1"),
    ("--canary-share", "nan", "from 0 to 1"),
    ("--canary-share", "1.5", "from 0 to 1"),
    ("--canary-share", "-0.1", "from 0 to 1"),
])  # fmt: skip
def test_promote_refuses_a_number_out_of_range_before_opening_the_store(option: str, value: str, says: str, capsys,
                                                                        monkeypatch) -> None:  # fmt: skip
    """The store URL nobody answers proves the refusal comes first: no connection is tried."""
    code, err = _run(capsys, monkeypatch, "promote", "--model", "m", "--candidate", "2", f"{option}={value}",
                     "--store-url", UNREACHABLE_POSTGRES)  # fmt: skip
    assert code == 2
    _one_clear_line(err, f"invalid {option}=", says, "e.g.")


@pytest.mark.parametrize("argv", [
    ["users", "list"],
    ["labels", "export", "--out", "labels.jsonl"],
    ["promote", "--model", "m", "--candidate", "2"],
    ["dashboard", "--port", "8599"],
])  # fmt: skip
def test_an_unreachable_postgresql_store_is_one_line_without_the_password(argv: list[str], capsys, monkeypatch,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, monkeypatch, *argv, "--store-url", UNREACHABLE_POSTGRES)
    assert code != 0
    _one_clear_line(err, "audit store at", "127.0.0.1", "unavailable")
    assert "s3cret" not in err


def test_a_sqlite_store_whose_directory_cannot_be_made_is_one_line(capsys, monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    code, err = _run(capsys, monkeypatch, "users", "add", "ada", "--role", "admin", "--password-stdin",
                     "--store-url", f"sqlite:///{blocker / 'sub' / 'audit.db'}")  # fmt: skip  # users add creates a store
    assert code != 0
    _one_clear_line(err, "audit store at", "cannot create the directory")


READERS = [
    ["users", "list"],
    ["users", "role", "ada", "--role", "viewer"],
    ["users", "disable", "ada"],
    ["users", "enable", "ada"],
    ["labels", "export", "--out", "labels.jsonl"],
    ["labels", "export", "--out", "coco/labels.json", "--format", "coco", "--model", "detector"],
    ["promote", "--model", "m", "--candidate", "2"],
    ["dashboard", "--port", "8599"],
]


@pytest.mark.parametrize("argv", READERS, ids=lambda argv: " ".join(argv[:2]))
def test_a_command_that_only_reads_refuses_a_store_that_does_not_exist_and_creates_none(
        argv: list[str], capsys, monkeypatch, tmp_path: Path) -> None:  # fmt: skip
    """A mistyped path used to get a fresh empty store: a dashboard where every login failed, an
    export of 0 labels, exit 0. Now one line naming the absolute path, and nothing made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDITSTREAM_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    code, err = _run(capsys, monkeypatch, *argv, "--store-url", "sqlite:///.auditstream/audti.db")
    assert code == 2
    _one_clear_line(err, f"no audit store at {tmp_path / '.auditstream' / 'audti.db'};", "sqlite:////")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


@pytest.mark.parametrize("argv", [READERS[0], READERS[4], ["users", "add", "ada", "--role", "admin", "--password-stdin"]],
                         ids=lambda argv: " ".join(argv[:2]))
def test_a_malformed_sqlite_url_is_one_line_with_the_right_spelling_and_creates_nothing(
        argv: list[str], capsys, monkeypatch, tmp_path: Path) -> None:  # fmt: skip
    """``sqlite:/tmp/m.db`` (slashes missing) used to make a folder named ``sqlite:`` here and a store in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    target = tmp_path / "elsewhere" / "m.db"
    code, err = _run(capsys, monkeypatch, *argv, "--store-url", f"sqlite:{target}")
    assert code == 2
    _one_clear_line(err, "invalid store_url=", f"'sqlite:///{target}' (the file {target})")
    assert list(tmp_path.iterdir()) == []


def test_users_add_creates_a_new_store_and_says_where(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///state/audit.db"  # three slashes: under the working directory
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    code, err = _run(capsys, monkeypatch, "users", "add", "ada", "--role", "admin", "--password-stdin", "--store-url", url)
    assert code == 0
    assert err.splitlines() == [f"auditstream: created a new audit store at {tmp_path / 'state' / 'audit.db'}"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("another long password\n"))
    code, err = _run(capsys, monkeypatch, "users", "add", "bob", "--role", "viewer", "--password-stdin", "--store-url", url)
    assert (code, err) == (0, "")  # the store is there now: nothing to say


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    """The same through a real process: what a person at a shell sees."""
    for argv in (["dashboard", "--port", "0"], ["users", "list", "--store-url", UNREACHABLE_POSTGRES]):
        done = subprocess.run([sys.executable, "-m", "auditstream.cli", *argv], capture_output=True, text=True,
                              timeout=120, cwd=REPO)  # fmt: skip  # -m puts the checkout first on the path
        assert done.returncode != 0
        _one_clear_line(done.stderr)


@pytest.mark.parametrize("out", ["", "   ", "{tmp}", "{tmp}/a-file/labels.jsonl", "/proc/no-such-folder/labels.jsonl"])
def test_labels_export_refuses_an_out_it_cannot_write(out: str, capsys, monkeypatch, tmp_path: Path) -> None:
    from store import open_store

    (tmp_path / "a-file").write_text("not a folder")
    open_store(f"sqlite:///{tmp_path / 'a.db'}", create=True).close()
    code, err = _run(capsys, monkeypatch, "labels", "export", "--out", out.format(tmp=tmp_path),
                     "--store-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert code == 2
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--out" in lines[0], err
    assert not list(tmp_path.rglob("*.tmp")) and not Path("/proc/no-such-folder").exists()


def test_monitor_refuses_a_flush_timeout_over_the_poll_interval_before_connecting(capsys, monkeypatch, tmp_path: Path) -> None:
    """Review r8: both options pass their own checks, but the flush timeout is the outbox
    producer's delivery timeout, which must stay under max_poll_interval_ms (300 s by default):
    refused at once, naming the option, before the store or the broker is opened."""
    import auditstream.kafka

    def no_broker(*args, **kwargs):
        raise AssertionError("connected to a broker before checking the options")

    monkeypatch.setattr(auditstream.kafka, "resolve_bootstrap", no_broker)
    code, err = _run(capsys, monkeypatch, "monitor", "--flush-timeout-s", "400", "--leader-lease-s", "500",
                     "--store-url", f"sqlite:///{tmp_path / 'a.db'}")
    assert code == 2
    _one_clear_line(err, "--flush-timeout-s 400", "AUDITSTREAM_MAX_POLL_INTERVAL_MS")
    assert not (tmp_path / "a.db").exists()  # refused before the store was opened too
