"""Accounts: slow salted hashes only, constant-time checks, roles, and the ``users`` CLI
(passwords prompted or read from stdin, never echoed, printed or logged). Run on SQLite and
PostgreSQL like the rest of the store."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Iterator

import pytest
from tests.store.store_factories import BACKENDS, make_store

from auditstream.cli import main as cli_main
from auditstream.errors import PermissionDenied
from store import accounts
from store.accounts import LoginThrottled, Role, User, check_password, hash_password, lockout_s, require_role
from store import AuditStore, open_store
from store.schema import SCHEMA_VERSION

PASSWORD = "correct horse battery"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    with make_store(request.param, tmp_path) as s:
        yield s


def _stored_hashes(store: AuditStore) -> dict[str, str]:
    return dict(store._db.query("SELECT name, password_hash FROM {p}users"))


def test_passwords_are_stored_only_as_salted_scrypt_hashes(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, "auditor")
    store.accounts.add_user("bob", PASSWORD, "viewer")
    hashes = _stored_hashes(store)
    for stored in hashes.values():
        assert PASSWORD not in stored
        scheme, params, salt, digest = stored.split("$")
        assert (scheme, params) == ("scrypt", f"n={2**17},r=8,p=1")  # current guidance for logins
        assert len(salt) == 24 and len(digest) == 44  # 16-byte salt, 32-byte hash, base64
    assert hashes["alice"] != hashes["bob"]  # same password, different salts
    assert hashes["alice"].split("$")[2] != hashes["bob"].split("$")[2]


def test_verify_password(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, Role.ADMIN)
    assert store.accounts.verify_password("alice", PASSWORD) == User("alice", Role.ADMIN)
    assert store.accounts.verify_password("alice", PASSWORD + " ") is None
    assert store.accounts.verify_password("alice", "") is None
    assert store.accounts.verify_password("mallory", PASSWORD) is None
    store.accounts.set_password("alice", "a new password")
    assert store.accounts.verify_password("alice", PASSWORD) is None
    assert store.accounts.verify_password("alice", "a new password") is not None
    store.accounts.set_role("alice", Role.ADMIN, disabled=True)
    assert store.accounts.verify_password("alice", "a new password") is None
    assert store.accounts.get("alice") is None


def test_lockout_schedule_doubles_after_the_first_lock_and_is_capped() -> None:
    assert [lockout_s(n) for n in range(accounts.MAX_FAILURES)] == [0.0] * accounts.MAX_FAILURES
    first = accounts.MAX_FAILURES
    assert [lockout_s(n) for n in (first, first + 1, first + 2)] == [accounts.LOCKOUT_S, 2 * accounts.LOCKOUT_S, 4 * accounts.LOCKOUT_S]
    assert lockout_s(first + 40) == lockout_s(10**6) == accounts.MAX_LOCKOUT_S


def test_failed_logins_lock_the_account_in_the_store_not_the_session(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count lives in the users table: another Accounts object (another dashboard session or
    process, or a restart) sees the same lock, and the count does not restart after a lock."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    t = 1_000.0
    for _ in range(accounts.MAX_FAILURES - 1):
        assert store.accounts.verify_password("alice", "wrong password", now_s=t) is None
    with pytest.raises(LoginThrottled) as locked:
        store.accounts.verify_password("alice", "wrong password", now_s=t)  # the failure that locks
    assert locked.value.retry_after_s == pytest.approx(accounts.LOCKOUT_S)
    other = accounts.Accounts(store._db)  # a fresh session/process: nothing in memory
    with pytest.raises(LoginThrottled, match="try again in 20 s") as e:
        other.verify_password("alice", PASSWORD, now_s=t + 10)  # even the right password is not checked
    assert e.value.failures == accounts.MAX_FAILURES
    assert other.login_state("alice") == (accounts.MAX_FAILURES, t + accounts.LOCKOUT_S)
    # After the lock the next failure locks again at once, for twice as long (no fresh five tries).
    t += accounts.LOCKOUT_S + 1
    with pytest.raises(LoginThrottled) as again:
        other.verify_password("alice", "still wrong", now_s=t)
    assert again.value.retry_after_s == pytest.approx(2 * accounts.LOCKOUT_S)
    t += 2 * accounts.LOCKOUT_S + 1
    assert store.accounts.verify_password("alice", PASSWORD, now_s=t) == User("alice", Role.AUDITOR)
    assert store.accounts.login_state("alice") == (0, None)  # success resets
    assert store.accounts.verify_password("alice", "wrong password", now_s=t) is None  # five fresh tries again


def test_unknown_names_are_throttled_alike_and_a_password_reset_lifts_a_lock(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    for name in ("alice", "mallory"):  # same answers whether the name exists or not
        answers = []
        for _ in range(accounts.MAX_FAILURES + 1):
            try:
                answers.append(store.accounts.verify_password(name, "wrong password", now_s=50.0))
            except LoginThrottled as e:
                answers.append(round(e.retry_after_s))
        assert answers == [None] * (accounts.MAX_FAILURES - 1) + [30, 30], name
    store.accounts.set_password("alice", "a brand new password")
    assert store.accounts.verify_password("alice", "a brand new password", now_s=51.0) == User("alice", Role.AUDITOR)


def test_opening_an_older_store_adds_the_login_columns(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-1 users table (no failed_logins/locked_until_s) is upgraded in place on open."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    with store._db.write() as cur:
        for column in ("failed_logins", "locked_until_s"):
            cur.run(f"ALTER TABLE {{p}}users DROP COLUMN {column}")
        cur.run("UPDATE {p}meta SET value = '1' WHERE key = 'schema_version'")
        assert "failed_logins" not in store._db.columns(cur, "users")
    with open_store(store._db.url, table_prefix=store._db.prefix, create=True) as reopened:
        with reopened._db.write() as cur:
            assert {"failed_logins", "locked_until_s"} <= reopened._db.columns(cur, "users")
        assert reopened._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        assert reopened.accounts.login_state("alice") == (0, None)
        assert reopened.accounts.verify_password("alice", "wrong password", now_s=1.0) is None
        assert reopened.accounts.login_state("alice") == (1, None)
        assert reopened.accounts.verify_password("alice", PASSWORD, now_s=2.0) == User("alice", Role.AUDITOR)


@pytest.mark.parametrize("name, password, match", [("alice", "short", "at least 8"), ("bad name", PASSWORD, "user name"),
                                                   ("", PASSWORD, "user name")])  # fmt: skip
def test_bad_names_and_short_passwords_are_refused(store: AuditStore, name: str, password: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        store.accounts.add_user(name, password, "auditor")


def test_a_name_is_taken_once_and_roles_are_checked(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, "auditor")
    with pytest.raises(ValueError, match="already exists"):
        store.accounts.add_user("alice", PASSWORD, "admin")
    with pytest.raises(ValueError):
        store.accounts.add_user("carol", PASSWORD, "superuser")
    assert [(u.name, u.role, off) for u, off in store.accounts.list_users()] == [("alice", Role.AUDITOR, False)]


def test_hash_checks_are_constant_time_compares_of_the_stored_parameters() -> None:
    stored = hash_password(PASSWORD)
    assert check_password(PASSWORD, stored) and not check_password("nope", stored)
    for broken in ("", "plain", "md5$x$y$z", stored.replace("scrypt", "bcrypt"), "scrypt$n=1$salt$hash"):
        assert not check_password(PASSWORD, broken)


def test_a_hash_asking_for_more_memory_than_the_cap_is_refused_not_computed() -> None:
    salt, digest = hash_password(PASSWORD).split("$")[2:]
    assert not check_password(PASSWORD, f"scrypt$n={2**24},r=8,p=1${salt}${digest}")  # 16 GiB: never allocated


def test_an_old_weak_hash_is_replaced_at_the_next_successful_login(store: AuditStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Accounts made with older parameters keep working and are upgraded on login, never by a
    wrong password."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("old", PASSWORD, Role.AUDITOR)
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)  # today's parameters are stronger

    def stored() -> str:
        return store._db.query("SELECT password_hash FROM {p}users WHERE name = ?", ("old",))[0][0]

    assert stored().startswith("scrypt$n=256,") and accounts.needs_rehash(stored())
    assert store.accounts.verify_password("old", "wrong password!") is None
    assert stored().startswith("scrypt$n=256,")  # a failed login changes nothing
    assert store.accounts.verify_password("old", PASSWORD) == User("old", Role.AUDITOR)
    assert stored().startswith("scrypt$n=1024,") and not accounts.needs_rehash(stored())
    assert store.accounts.verify_password("old", PASSWORD) == User("old", Role.AUDITOR)


def test_require_role_and_reprs_without_secrets() -> None:
    viewer = User("vera", Role.VIEWER)
    assert require_role(User("ada", Role.ADMIN), Role.ADMIN, Role.AUDITOR) == User("ada", Role.ADMIN)
    with pytest.raises(PermissionDenied, match="user 'vera' \\(role 'viewer'\\) may not record verdicts; it needs one of the roles auditor, admin"):
        require_role(viewer, "auditor", "admin", action="record verdicts")
    with pytest.raises(PermissionDenied, match="<anonymous>"):
        require_role(None, "viewer")
    assert repr(viewer) == "User(name='vera', role=<Role.VIEWER: 'viewer'>)"


def test_store_repr_hides_the_url(tmp_path: Path) -> None:
    with make_store("sqlite", tmp_path) as store:
        assert str(tmp_path) not in repr(store)


# --- the CLI ----------------------------------------------------------------------------------


def test_users_add_reads_the_password_from_stdin_and_never_prints_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    with caplog.at_level(logging.DEBUG):
        assert cli_main(["users", "add", "alice", "--role", "auditor", "--password-stdin", "--store-url", url]) == 0
        assert cli_main(["users", "list", "--store-url", url]) == 0
    out = capsys.readouterr()
    assert "added alice (auditor)" in out.out and "alice\tauditor" in out.out
    assert PASSWORD not in out.out + out.err + caplog.text and "scrypt" not in out.out
    with open_store(url, create=True) as store:
        assert store.accounts.verify_password("alice", PASSWORD) == User("alice", Role.AUDITOR)


def test_users_add_prompts_twice_with_getpass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import getpass

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    answers = iter([PASSWORD, PASSWORD, PASSWORD, "typo"])
    prompts: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or next(answers))
    assert cli_main(["users", "add", "ada", "--role", "admin", "--store-url", url]) == 0
    capsys.readouterr()
    assert cli_main(["users", "add", "bob", "--role", "viewer", "--store-url", url]) == 2
    assert capsys.readouterr().err.splitlines() == ["auditstream: error: the two passwords differ; nothing was changed"]
    assert prompts == ["password: ", "again: ", "password: ", "again: "]
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert cli_main(["users", "add", "ada", "--role", "admin", "--password-stdin", "--store-url", url]) == 2
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err and "already exists" in out.err


@pytest.mark.parametrize("typed", [[], [PASSWORD]], ids=["ctrl-d at the first prompt", "one line, then the end"])
def test_input_that_ends_at_the_prompt_is_one_line_not_a_traceback(typed: list[str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import getpass

    answers = iter(typed)

    def prompt(_prompt: str = "") -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None  # what getpass raises when its input ends

    monkeypatch.setattr(getpass, "getpass", prompt)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    assert cli_main(["users", "add", "zed", "--role", "auditor", "--store-url", url]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["auditstream: error: the input ended before the password was typed twice; nothing "
                                "was changed (type it at the prompt, or pipe one line with --password-stdin)"]
    assert not (tmp_path / "audit.db").exists()  # nothing made either
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli_main(["users", "add", "zed", "--role", "auditor", "--password-stdin", "--store-url", url]) == 2
    assert "standard input ended before a password line" in capsys.readouterr().err


def test_users_add_with_no_input_from_a_shell_is_one_line(tmp_path: Path) -> None:
    """The review's command, ``auditstream users add zed --role auditor </dev/null``, in a real
    process without a terminal (getpass then reads standard input)."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "auditstream", "users", "add", "zed", "--role", "auditor",
                           "--store-url", f"sqlite:///{tmp_path / 'audit.db'}"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, start_new_session=True,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "auditstream: error: the input ended" in done.stderr, done.stderr


def test_a_password_reset_or_disabling_ends_the_sessions_signed_in_before(store: AuditStore,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    first = store.accounts.sign_in("alice", PASSWORD)
    assert first.user == User("alice", Role.AUDITOR)
    assert store.accounts.session_user("alice", first.generation) == User("alice", Role.AUDITOR)
    store.accounts.set_role("alice", Role.ADMIN)  # a role change keeps the session (the role is read each render)
    assert store.accounts.session_user("alice", first.generation) == User("alice", Role.ADMIN)
    store.accounts.set_password("alice", "a new password")
    assert store.accounts.session_user("alice", first.generation) is None
    second = store.accounts.sign_in("alice", "a new password")
    assert store.accounts.session_user("alice", second.generation) == User("alice", Role.ADMIN)
    store.accounts.set_role("alice", Role.ADMIN, disabled=True)
    assert store.accounts.session_user("alice", second.generation) is None and store.accounts.session("alice") is None
    store.accounts.set_role("alice", Role.ADMIN)  # enabled again: the old sessions stay ended
    assert store.accounts.session_user("alice", second.generation) is None
    assert store.accounts.session_user("alice", store.accounts.session("alice").generation) == User("alice", Role.ADMIN)
    assert store.accounts.session_user("alice", None) is None and store.accounts.session_user("nobody", 0) is None


def test_opening_an_older_store_adds_the_credential_generation(store: AuditStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A version-4 users table (no credential_gen) is upgraded in place on open; its accounts
    start at generation 0 and a reset ends their sessions from then on."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    with store._db.write() as cur:
        cur.run("ALTER TABLE {p}users DROP COLUMN credential_gen")
        cur.run("UPDATE {p}meta SET value = '4' WHERE key = 'schema_version'")
    with open_store(store._db.url, table_prefix=store._db.prefix, create=True) as reopened:
        with reopened._db.write() as cur:
            assert "credential_gen" in reopened._db.columns(cur, "users")
        assert reopened._db.query("SELECT value FROM {p}meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        signed = reopened.accounts.sign_in("alice", PASSWORD)
        assert signed.generation == 0 and reopened.accounts.session_user("alice", 0) == User("alice", Role.AUDITOR)
        reopened.accounts.set_password("alice", "a new password")
        assert reopened.accounts.session_user("alice", 0) is None


def test_an_old_hash_is_replaced_without_holding_the_write_lock_while_hashing(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """SQLite's write lock (BEGIN IMMEDIATE) is the whole database's: held through a 0.6 s
    scrypt it stopped every claim and verdict. While the new hash is computed, another
    connection takes the write lock without waiting (timeout 0: refused at once if held)."""
    import sqlite3

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    with make_store("sqlite", tmp_path) as store:
        store.accounts.add_user("old", PASSWORD, Role.AUDITOR)
        monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)  # today's parameters are stronger
        path = store._db.url.removeprefix("sqlite:///")
        real_hash, seen = accounts.hash_password, []

        def hash_while_another_writes(password: str, **kwargs) -> str:
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                seen.append("write lock free")
            except sqlite3.OperationalError as e:
                seen.append(str(e))
            finally:
                other.close()
            return real_hash(password, **kwargs)

        monkeypatch.setattr(accounts, "hash_password", hash_while_another_writes)
        assert store.accounts.verify_password("old", PASSWORD) == User("old", Role.AUDITOR)
        assert seen == ["write lock free"]
        assert _stored_hashes(store)["old"].startswith("scrypt$n=1024,")


@pytest.mark.parametrize("twin", ["Alice", "ALICE", "aIice", "a1ice", "al1ce"])
def test_a_name_that_looks_like_an_existing_one_is_refused(store: AuditStore, monkeypatch: pytest.MonkeyPatch,
                                                           twin: str) -> None:  # fmt: skip
    """Look-alike accounts (alice, Alice, aIice) would let one person pass for another in every
    list and log; a login still names its account exactly (an older store's look-alikes keep theirs)."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    with pytest.raises(ValueError, match=f"user name '{twin}' looks like the existing 'alice'"):
        store.accounts.add_user(twin, PASSWORD, Role.ADMIN)
    assert [u.name for u, _ in store.accounts.list_users()] == ["alice"]
    assert store.accounts.verify_password(twin, PASSWORD) is None  # exact names at login
    store.accounts.add_user("bob", PASSWORD, Role.AUDITOR)  # other names are unaffected
    assert accounts.look_alike("ＡＬＩＣＥ") == accounts.look_alike("alice")  # NFKC: full-width letters too


def test_users_role_password_disable_and_enable_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """An admin manages accounts without Python: a role change keeps the account's state, a new
    password ends earlier sessions and lifts a lock-out, disabling ends them for good, enabling
    brings the account back with its role; an unknown name or a short password is one line, exit 2."""
    monkeypatch.setattr(accounts, "SCRYPT_N", 2**10)
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_store(url, create=True) as store:
        store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
        before = store.accounts.sign_in("alice", PASSWORD)
    assert cli_main(["users", "disable", "alice", "--store-url", url]) == 0
    assert cli_main(["users", "role", "alice", "--role", "admin", "--store-url", url]) == 0
    with open_store(url, create=True) as store:
        assert [(u.name, u.role, off) for u, off in store.accounts.list_users()] == [("alice", Role.ADMIN, True)]
        assert store.accounts.sign_in("alice", PASSWORD) is None
    assert cli_main(["users", "enable", "alice", "--store-url", url]) == 0
    with open_store(url, create=True) as store:
        assert store.accounts.session_user("alice", before.generation) is None  # disabling ended it for good
        again = store.accounts.sign_in("alice", PASSWORD)
        assert again.user == User("alice", Role.ADMIN)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a-new-password-1\n"))
    assert cli_main(["users", "password", "alice", "--password-stdin", "--store-url", url]) == 0
    with open_store(url, create=True) as store:
        assert store.accounts.session_user("alice", again.generation) is None
        assert store.accounts.verify_password("alice", "a-new-password-1") == User("alice", Role.ADMIN)
    capsys.readouterr()
    assert cli_main(["users", "disable", "bob", "--store-url", url]) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert cli_main(["users", "password", "alice", "--password-stdin", "--store-url", url]) == 2
    out = capsys.readouterr()
    assert "no user 'bob'" in out.err and "use at least" in out.err and "short" not in out.out
    assert len(out.err.strip().splitlines()) == 2 and "Traceback" not in out.err


@pytest.mark.parametrize("change", ["disable", "demote", "password reset"])
def test_an_account_that_can_no_longer_submit_gives_its_leases_back_at_once(store: AuditStore, change: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Disabling, a role below auditor and a password reset (which ends her sessions) release the
    account's leases in the same transaction: nobody waits --lease-s for an item nobody can submit."""
    import time

    from tests.store.store_factories import audit_item

    monkeypatch.setattr(accounts, "SCRYPT_N", 2**8)
    alice, bob = (store.accounts.add_user(n, PASSWORD, Role.AUDITOR) for n in ("alice", "bob"))
    store.ingest(audit_item("r-1"), time.time())
    claim = store.claim(alice, 300.0, time.time())
    assert claim is not None and store.claim(bob, 300.0, time.time()) is None
    if change == "disable":
        store.accounts.set_role("alice", Role.AUDITOR, disabled=True)
    elif change == "demote":
        store.accounts.set_role("alice", Role.VIEWER)
    else:
        store.accounts.set_password("alice", "a brand new password")
    item = store.item(claim.item_id)
    assert (item.lease_owner, item.lease_expires_s) == (None, None)
    assert store.claim(bob, 300.0, time.time()).item_id == claim.item_id
    store.accounts.set_role("bob", Role.ADMIN)  # a role that may still submit keeps the lease
    assert store.item(claim.item_id).lease_owner == "bob"
