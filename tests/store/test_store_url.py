"""Where a store URL points, and who may create a store there.

A SQLite URL is spelt as SQLAlchemy spells it (``sqlite:///`` then the path: ``sqlite:///a.db`` is
under the working directory, ``sqlite:////abs/a.db`` absolute); any other spelling is refused,
showing the ones it may have meant, and creates nothing (``sqlite:/tmp/m.db`` used to make a folder
named ``sqlite:`` and a store in it). ``open_store(create=False)`` (what every command that only
reads passes) refuses a store that does not exist instead of creating an empty one."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from tests.store.store_factories import POSTGRES_URL, postgres_unavailable

from auditstream.errors import ConfigError
from store import StoreMissing, open_store
from store.backend import sqlite_path


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
    with open_store("sqlite:///sub/x.db") as store:
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
    with pytest.raises(StoreMissing, match=f"tables {prefix}"):
        open_store(POSTGRES_URL, table_prefix=prefix, create=False)
    with open_store(POSTGRES_URL, table_prefix=prefix, create=True) as store:
        try:
            assert store.created
            with open_store(POSTGRES_URL, table_prefix=prefix, create=False) as again:
                assert not again.created
        finally:
            store.drop_tables()
