"""The login throttle of names with no account lives in the store, like an account's: two
dashboard processes (two store handles, "replicas"), or one restarted, answer a known and an
unknown name alike, so the lock message does not tell which names exist. On SQLite and
PostgreSQL."""

from __future__ import annotations

import pytest

from store import AuditStore, accounts, open_store
from store.accounts import LoginThrottled, Role

PASSWORD = "correct horse battery"


def _answer(store: AuditStore, name: str, now_s: float) -> str:
    """What the login form would say (dashboards/auth_ui.py)."""
    try:
        store.accounts.sign_in(name, "wrong-guess-123", now_s=now_s)
        return "Wrong user name or password."
    except LoginThrottled as e:
        return f"Too many attempts; try again in {e.retry_after_s:.0f} s."


def _replica(store: AuditStore) -> AuditStore:
    return open_store(store._db.url, table_prefix=store._db.prefix, create=False)


def test_a_second_replica_answers_alike_for_a_known_and_an_unknown_name(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    replica_b = _replica(store)
    try:
        answers = {}
        for name in ("alice", "mallory"):
            for _ in range(accounts.MAX_FAILURES):
                _answer(store, name, now_s=1000.0)
            answers[name] = _answer(replica_b, name, now_s=1001.0)
        assert answers["alice"] == answers["mallory"] == "Too many attempts; try again in 29 s."
        # the doubling lock is shared too: one more failure after the lock, on replica B
        assert _answer(replica_b, "alice", now_s=1031.0) == _answer(replica_b, "mallory", now_s=1031.0)
        assert _answer(store, "alice", now_s=1032.0) == _answer(store, "mallory", now_s=1032.0) != "Wrong user name or password."
    finally:
        replica_b.close()


def test_a_restart_keeps_the_lock_of_an_unknown_name(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    first = _replica(store)
    for name in ("alice", "mallory"):
        for _ in range(accounts.MAX_FAILURES):
            _answer(first, name, now_s=500.0)
    first.close()  # the process ends
    restarted = _replica(store)
    try:
        assert _answer(restarted, "alice", now_s=510.0) == _answer(restarted, "mallory", now_s=510.0) == (
            "Too many attempts; try again in 20 s.")
    finally:
        restarted.close()


def test_a_count_is_forgotten_alike_after_a_quiet_day(store: AuditStore) -> None:
    """An unknown name's row is deleted after FAILURES_FORGOTTEN_S; an account's count is
    forgotten after as long, so a late attempt does not tell them apart either."""
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    for name in ("alice", "mallory"):
        for _ in range(accounts.MAX_FAILURES):
            _answer(store, name, now_s=0.0)
    later = accounts.FAILURES_FORGOTTEN_S + 1.0
    assert _answer(store, "alice", now_s=later) == _answer(store, "mallory", now_s=later) == "Wrong user name or password."
    assert store.accounts.login_state("alice") == (1, None)


@pytest.mark.parametrize("name", ["Alice", "ALICE"])
def test_a_case_variant_of_an_account_is_an_unknown_name_of_its_own(store: AuditStore, name: str) -> None:
    """Accounts are looked up by their exact name, so unknown names are keyed exactly too: had
    "Alice" shared "alice"'s row only when "alice" has no account, locking one and trying the
    other would tell."""
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    for _ in range(accounts.MAX_FAILURES):
        _answer(store, name, now_s=0.0)
    assert _answer(store, "alice", now_s=1.0) == _answer(store, "zed", now_s=1.0) == "Wrong user name or password."
