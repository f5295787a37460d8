"""Login throttling under concurrency and hostile names, on SQLite and PostgreSQL.

A lock check that runs before the slow hash and a failure recorded after it let concurrent
wrong guesses all pass the check: N guesses at once were N password checks, whatever the limit.
Each attempt is now reserved in the transaction that checks the lock, so at most MAX_FAILURES
passwords are ever checked before the lock, however many guesses arrive together. Names no
account can have are refused before any hash and never remembered.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings, strategies as st
from tests.store.store_factories import BACKENDS, make_store

from store import AuditStore, accounts
from store.accounts import LoginThrottled, Role, User

PASSWORD = "correct horse battery"
GUESSES = 16


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, fast_hashes: None) -> Iterator[AuditStore]:
    with make_store(request.param, tmp_path) as s:
        yield s


class CountingCheck:
    """check_password that counts its calls and lingers, so concurrent attempts overlap the hash."""

    def __init__(self) -> None:
        self.calls, self._lock, self._real = 0, threading.Lock(), accounts.check_password

    def __call__(self, password: str, stored: str) -> bool:
        with self._lock:
            self.calls += 1
        time.sleep(0.2)  # a slow hash: widens the window a check-then-record race needs (asserts no time)
        return self._real(password, stored)


def _guess_at_once(store: AuditStore, name: str, password: str, n: int) -> list:
    answers: list = []
    lock, start = threading.Lock(), threading.Barrier(n)

    def guess() -> None:
        start.wait()
        try:
            answer = store.accounts.verify_password(name, password, now_s=1_000.0)
        except LoginThrottled as e:
            answer = e
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=guess) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.parametrize("name", ["alice", "mallory"])  # an account, and a name without one
def test_concurrent_wrong_guesses_check_at_most_max_failures_passwords(store: AuditStore, name: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    counting = CountingCheck()
    monkeypatch.setattr(accounts, "check_password", counting)
    # This is about the lock's count, not the hash slots: a loaded machine (CI beside other jobs)
    # once kept a slot from one of the 5 checks for the 3 s a login waits, and it said LoginBusy.
    monkeypatch.setattr(accounts, "SCRYPT_WAIT_S", 120.0)
    answers = _guess_at_once(store, name, "wrong password", GUESSES)
    assert counting.calls == accounts.MAX_FAILURES  # the rest were refused before any hash
    throttled = [a for a in answers if isinstance(a, LoginThrottled)]
    assert len(throttled) == GUESSES - accounts.MAX_FAILURES + 1  # the locking failure says so too
    assert answers.count(None) == accounts.MAX_FAILURES - 1
    if name == "alice":
        failures, locked_until = store.accounts.login_state("alice")
        assert failures == accounts.MAX_FAILURES and locked_until == pytest.approx(1_000.0 + accounts.LOCKOUT_S)


def test_the_right_password_among_concurrent_guesses_resets_the_count(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    answers = _guess_at_once(store, "alice", PASSWORD, accounts.MAX_FAILURES - 1)
    assert answers == [User("alice", Role.AUDITOR)] * (accounts.MAX_FAILURES - 1)
    assert store.accounts.login_state("alice") == (0, None)  # each reserved failure was taken back


def test_the_attempt_that_reaches_the_limit_with_the_right_password_still_logs_in(store: AuditStore) -> None:
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    for _ in range(accounts.MAX_FAILURES - 1):
        assert store.accounts.verify_password("alice", "wrong password", now_s=10.0) is None
    assert store.accounts.verify_password("alice", PASSWORD, now_s=10.0) == User("alice", Role.AUDITOR)
    assert store.accounts.login_state("alice") == (0, None)


@pytest.mark.parametrize("name", ["alice\n", "alice\r\n", " alice", "", "a" * 65, "bad name", "x" * 1_000_000, "\x00"],
                         ids=["newline", "crlf", "space", "empty", "65", "inner-space", "megabyte", "nul"])
def test_names_no_account_can_have_are_refused_without_a_hash_or_memory(store: AuditStore, name: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    counting = CountingCheck()
    monkeypatch.setattr(accounts, "check_password", counting)
    for _ in range(accounts.MAX_FAILURES + 2):  # never throttled either: nothing is kept for it
        assert store.accounts.verify_password(name, PASSWORD) is None
    assert counting.calls == 0 and store._db.query("SELECT COUNT(*) FROM {p}login_throttle") == [(0,)]
    with pytest.raises(ValueError, match="user name"):
        store.accounts.add_user(name, PASSWORD, Role.AUDITOR)


@settings(max_examples=200)
@given(name=st.text(max_size=80))
def test_valid_names_are_exactly_the_pattern_without_line_ends(name: str) -> None:
    ok = (0 < len(name) <= 64 and name.isascii() and (name[0].isalnum())
          and all(c.isalnum() or c in "_.@-" for c in name))  # fmt: skip
    assert accounts.valid_name(name) == ok


def test_unknown_names_remembered_are_bounded(store: AuditStore) -> None:
    """A name with no account keeps a row in the store while it was tried within
    FAILURES_FORGOTTEN_S; older rows go at the next unknown attempt."""
    for i in range(30):
        assert store.accounts.verify_password(f"guess{i}", "wrong password", now_s=100.0 + i) is None
    assert store._db.query("SELECT COUNT(*) FROM {p}login_throttle") == [(30,)]
    later = 100.0 + 20 + accounts.FAILURES_FORGOTTEN_S
    assert store.accounts.verify_password("another", "wrong password", now_s=later) is None
    assert store._db.query("SELECT COUNT(*) FROM {p}login_throttle") == [(10,)]  # guess21..29 and another
    keys = [k for (k,) in store._db.query("SELECT name_key FROM {p}login_throttle")]
    assert not any("guess" in k or "another" in k for k in keys)  # keyed hashes, not the names


class GatedScrypt:
    """hashlib.scrypt that counts the calls running at once and holds each until ``open()``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = self.peak = self.entered = self.arrived = 0
        self._open, self._real = False, hashlib.scrypt

    def __call__(self, *args, **kwargs) -> bytes:
        with self.cond:
            self.active += 1
            self.entered += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self._open, timeout=120)
        try:
            return self._real(*args, **kwargs)
        finally:
            with self.cond:
                self.active -= 1

    def open(self) -> None:
        with self.cond:
            self._open = True
            self.cond.notify_all()


class CountedSlots(threading.BoundedSemaphore):
    """The hash slots, counting the attempts that reached them (arrived, waiting or not)."""

    def __init__(self, value: int, gate: GatedScrypt) -> None:
        super().__init__(value)
        self.gate = gate

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        with self.gate.cond:
            self.gate.arrived += 1
            self.gate.cond.notify_all()
        return super().acquire(blocking, timeout)


def test_concurrent_logins_run_at_most_the_slots_of_scrypt_at_once(store: AuditStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Each scrypt holds 128 MiB: however many anonymous attempts arrive together, no more than
    SCRYPT_SLOTS run at once (counted, not timed: every attempt is held inside the hash until all
    have arrived at the slots or entered the hash)."""
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    accounts._dummy_hash()  # built once, before the count
    gate = GatedScrypt()
    monkeypatch.setattr(hashlib, "scrypt", gate)
    monkeypatch.setattr(accounts, "_scrypt_slots", CountedSlots(accounts.SCRYPT_SLOTS, gate), raising=False)
    monkeypatch.setattr(accounts, "SCRYPT_WAIT_S", 120.0, raising=False)
    names = ["alice", *(f"nobody{i}" for i in range(GUESSES - 1))]  # fresh names: no throttle holds them back
    answers: list = []
    threads = [threading.Thread(target=lambda n=n: answers.append(store.accounts.verify_password(n, "a guess!")))
               for n in names]  # fmt: skip
    for thread in threads:
        thread.start()
    with gate.cond:
        assert gate.cond.wait_for(lambda: GUESSES in (gate.arrived, gate.entered), timeout=120)
        assert gate.peak <= accounts.SCRYPT_SLOTS and gate.entered == accounts.SCRYPT_SLOTS
    gate.open()
    for thread in threads:
        thread.join()
    assert answers == [None] * GUESSES and gate.entered == GUESSES and gate.peak == accounts.SCRYPT_SLOTS


def test_an_attempt_without_a_free_slot_is_busy_and_counted(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.accounts.add_user("alice", PASSWORD, Role.AUDITOR)
    accounts._dummy_hash()
    monkeypatch.setattr(accounts, "SCRYPT_WAIT_S", 0.01)
    slots = threading.BoundedSemaphore(accounts.SCRYPT_SLOTS)
    monkeypatch.setattr(accounts, "_scrypt_slots", slots)
    for _ in range(accounts.SCRYPT_SLOTS):  # other logins hold every slot
        slots.acquire()
    for name in ("alice", "mallory"):  # the same answers with and without an account
        answers = []
        for _ in range(accounts.MAX_FAILURES + 1):
            try:
                answers.append(store.accounts.verify_password(name, PASSWORD, now_s=100.0))
            except (accounts.LoginBusy, LoginThrottled) as e:
                answers.append(type(e).__name__)
        assert answers == ["LoginBusy"] * (accounts.MAX_FAILURES - 1) + ["LoginThrottled"] * 2, name
    assert store.accounts.login_state("alice") == (accounts.MAX_FAILURES, 100.0 + accounts.LOCKOUT_S)
    for _ in range(accounts.SCRYPT_SLOTS):
        slots.release()
    later = 100.0 + accounts.LOCKOUT_S + 1
    assert store.accounts.verify_password("alice", PASSWORD, now_s=later) == User("alice", Role.AUDITOR)
