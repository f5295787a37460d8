"""Where a store URL points, and who may create a store there.

A SQLite URL is spelt as SQLAlchemy spells it (``sqlite:///`` then the path: ``sqlite:///a.db`` is
under the working directory, ``sqlite:////abs/a.db`` absolute); any other spelling is refused,
showing the ones it may have meant, and creates nothing (``sqlite:/tmp/m.db`` used to make a folder
named ``sqlite:`` and a store in it). ``open_store(create=False)`` (what every command that only
reads passes) refuses a store that does not exist instead of creating an empty one."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tests.store.store_factories import POSTGRES_URL, postgres_unavailable

from auditstream.errors import ConfigError
from store import StoreMissing, open_store
from store.backend import StoreUnavailable, sqlite_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url, shown", [
    ("sqlite:/tmp/m.db", ["'sqlite:////tmp/m.db' (the file /tmp/m.db)", "'sqlite:///tmp/m.db'"]),
    ("sqlite:tmp/m.db", ["'sqlite:////tmp/m.db'", "'sqlite:///tmp/m.db'"]),
    ("sqlite://m.db", ["'sqlite:////m.db'", "'sqlite:///m.db'"]),
    ("sqlite:///m.db?mode=ro", ["'sqlite:///m.db'", "no ?query"]),
    ("sqlite:", ["'sqlite:///relative/path.db'", "'sqlite:////absolute/path.db'"]),
    ("sqlite:///", ["'sqlite:///relative/path.db'"]),
])  # fmt: skip
def test_a_malformed_sqlite_url_is_refused_with_the_right_spelling_and_creates_nothing(
        url: str, shown: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    for create in (True, False):
        with pytest.raises(ConfigError, match="store_url") as e:
            open_store(url, create=create)
        for text in shown:
            assert text in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []  # no folder named 'sqlite:', no m.db


def test_three_slashes_are_relative_to_the_working_directory_four_absolute(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///tmp/x.db") == Path("tmp/x.db")
    assert sqlite_path("sqlite:////tmp/x.db") == Path("/tmp/x.db")
    with open_store("sqlite:///sub/x.db", create=True) as store:
        assert store.created and store.location == str(tmp_path / "sub" / "x.db")
    assert (tmp_path / "sub" / "x.db").is_file()


def test_a_store_that_does_not_exist_is_refused_not_created_when_create_is_false(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "audti.db"
    with pytest.raises(StoreMissing, match=f"no audit store at {path};.*sqlite:////") as e:
        open_store(f"sqlite:///{path}", create=False)
    assert "auditstream monitor" in str(e.value)
    assert not (tmp_path / "typo").exists()


def test_an_existing_file_without_the_stores_tables_is_refused_when_create_is_false(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StoreMissing, match="holds no audit store tables"):
        open_store(f"sqlite:///{path}", create=False)
    with sqlite3.connect(path) as cx:  # no table was written into it
        assert cx.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_create_says_whether_it_created_and_an_existing_store_opens_either_way(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_store(url, create=True) as store:
        assert store.created and store.location == str(tmp_path / "audit.db")
    for create in (True, False):
        with open_store(url, create=create) as store:
            assert not store.created


@pytest.mark.postgres
def test_postgresql_without_the_stores_tables_is_refused_when_create_is_false() -> None:
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    with pytest.raises(StoreMissing, match=f"tables {prefix}") as e:
        open_store(POSTGRES_URL, table_prefix=prefix, create=False)
    # not the SQLite spelling hint: it says nothing about a PostgreSQL URL
    assert "sqlite" not in str(e.value) and "table prefix" in str(e.value), str(e.value)
    with open_store(POSTGRES_URL, table_prefix=prefix, create=True) as store:
        try:
            assert store.created
            with open_store(POSTGRES_URL, table_prefix=prefix, create=False) as again:
                assert not again.created
        finally:
            store.drop_tables()


@pytest.mark.parametrize("url, shown", [
    ("sqlite:///:memory:", ["in-memory database is not a store", "'sqlite:///audit.db'", "'sqlite:////absolute/audit.db'"]),
    ("sqlite:///file:x.db", ["SQLite reads a name starting with 'file:' as a URI", "'sqlite:///x.db'"]),
    ("sqlite:///file:///tmp/x.db", ["'sqlite:///tmp/x.db'"]),
])  # fmt: skip
def test_names_sqlite_does_not_read_as_a_file_are_refused_saying_what_to_write(
        url: str, shown: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """sqlite:///:memory: was a store that vanished with its connection, reported as the file
    /cwd/:memory:; sqlite:///file:x.db wrote x.db (SQLite read the name as a URI) beside an empty
    file named file:x.db."""
    monkeypatch.chdir(tmp_path)
    for create in (True, False):
        with pytest.raises(ConfigError, match="store_url") as e:
            open_store(url, create=create)
        for text in shown:
            assert text in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []


_PART = st.one_of(st.sampled_from([":memory:", "file:x.db", "file:", "FILE:y", "a.db", "sub", ".", "x?y", "%3A", "#z",
                                   "a b", "é.db", "-wal", "~", ":"]),
                  st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
                          min_size=1, max_size=6).filter(lambda t: t != ".."))  # fmt: skip


@hypothesis_settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_PART, min_size=1, max_size=3), slashes=st.sampled_from([3, 3, 3, 3, 0, 1, 2, 4, 5]))
def test_a_sqlite_url_is_refused_or_its_store_is_the_file_it_names(parts: list[str], slashes: int, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Property: for any sqlite: URL, either ConfigError (creating nothing), or open_store(create=True)
    creates the store in exactly the file sqlite_path names -- location that file's absolute path,
    the tables in it, nothing written anywhere else. It would have found :memory: (no file at the
    location) and file:x.db (the tables in x.db)."""
    work = tmp_path / uuid.uuid4().hex
    work.mkdir()
    monkeypatch.chdir(work)
    url = "sqlite:" + "/" * slashes + "/".join(parts)
    try:
        path = sqlite_path(url)
    except ConfigError:
        with pytest.raises(ConfigError):
            open_store(url, create=True)
        assert list(work.iterdir()) == []
        return
    if path.is_absolute():  # sqlite:////<parts>: keep the test inside its folder
        return
    try:
        store = open_store(url, create=True)
    except StoreUnavailable:  # a name the file system refuses (too long, ...): refused in one line
        return
    with store:
        assert store.created and store.location == str(work / path)
    with sqlite3.connect(work / path) as cx:
        assert cx.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'items'").fetchone() == (1,)
    made = {str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()}
    assert made <= {str(path), f"{path}-wal", f"{path}-shm"}, made


def _tune_like(path: Path) -> None:
    """Another program's SQLite database in rollback-journal mode (an Optuna study file, say)."""
    with sqlite3.connect(path) as cx:
        cx.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        cx.executemany("INSERT INTO studies (study_name) VALUES (?)", [(f"s{i}",) for i in range(50)])
    cx.close()


def test_a_file_that_is_no_store_is_left_byte_for_byte_as_it_was_when_create_is_false(tmp_path: Path) -> None:
    """create=False used to open a normal connection first: PRAGMA journal_mode=WAL switched
    another program's database to WAL, and an empty file became a 4096-byte database, while the
    refusal said "nothing was created". The check now runs over a read-only connection."""
    tune, empty, text = tmp_path / "tune.db", tmp_path / "empty.db", tmp_path / "notes.db"
    _tune_like(tune)
    empty.touch()
    text.write_bytes(b"not a database, just notes\n" * 200)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for path, why in ((tune, "holds no audit store tables"), (empty, "holds no audit store tables"),
                      (text, "not a SQLite database")):
        with pytest.raises(StoreMissing, match=why):
            open_store(f"sqlite:///{path}", create=False)
        done = subprocess.run([sys.executable, "-m", "auditstream", "users", "list", "--store-url", f"sqlite:///{path}"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"no audit store at {path}" in lines[0] and why in lines[0], done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no -wal, -shm or -journal either
    with sqlite3.connect(tune) as cx:
        assert cx.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    cx.close()


def _unprivileged() -> list[str] | None:
    """A command prefix that runs a process without the right to read others' files: nothing for a
    normal user; for root, setpriv dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (None if
    that cannot be done here)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


def test_a_store_this_user_may_not_read_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A create=False reader of a store in a folder it may not enter died with a PermissionError
    traceback (Path.exists raises it on Python 3.11); a store file it may not read is the same
    case one step later. Real permissions, not a mock: the commands run without the capabilities
    that let root read anything."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot drop the right to read every file")
    closed = tmp_path / "closed"
    closed.mkdir()
    with open_store(f"sqlite:///{closed / 'audit.db'}", create=True):
        pass
    unreadable = tmp_path / "open" / "audit.db"
    unreadable.parent.mkdir()
    with open_store(f"sqlite:///{unreadable}", create=True):
        pass
    if os.geteuid() == 0:  # someone else's, closed to root without its capabilities
        for p in (closed, unreadable):
            os.chown(p, 65534, 65534)
        closed.chmod(0o700)
        unreadable.chmod(0o600)
    else:
        closed.chmod(0o000)
        unreadable.chmod(0o000)
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", f"import os; os.stat({str(closed / 'audit.db')!r})"],
                               capture_output=True, text=True, timeout=60)
        if "PermissionError" not in probe.stderr:
            pytest.skip(f"cannot take away the right to enter a folder here: {probe.stderr.strip()[-200:]}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        api = ("import sys; from store import open_store\n"
               "try:\n    open_store(sys.argv[1], create=False)\n"
               "except Exception as e:\n    print(type(e).__name__); print(e)\n")
        for store in (closed / "audit.db", unreadable):
            url = f"sqlite:///{store}"
            done = subprocess.run([*prefix, sys.executable, "-m", "auditstream", "users", "list", "--store-url", url],
                                  capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and "unavailable" in lines[0] and str(store) in lines[0], done.stderr
            assert "Permission denied" in lines[0] or "unable to open" in lines[0], lines[0]
            assert "may enter the folders on the path and read and write the file" in lines[0]
            raised = subprocess.run([*prefix, sys.executable, "-c", api, url], capture_output=True, text=True,
                                    env=env, cwd=tmp_path, timeout=120)
            assert raised.stdout.splitlines()[:1] == ["StoreUnavailable"], raised.stdout + raised.stderr
        # a writer (create=True) there: one line too
        done = subprocess.run([*prefix, sys.executable, "-m", "auditstream", "users", "add", "x", "--role", "auditor",
                               "--password-stdin", "--store-url", f"sqlite:///{closed / 'new.db'}"],
                              input="longpassword12\n", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and str(closed / "new.db") in done.stderr, done.stderr
    finally:
        closed.chmod(0o700)
        unreadable.chmod(0o600)
