"""Local accounts of the audit dashboard, stored in the audit store's ``users`` table.

Passwords are kept only as slow salted hashes: scrypt (RFC 7914) with a 16-byte random salt per
user and N=2**17, r=8, p=1 (128 MiB and about 0.6 s per hash on one core, the current
guidance for interactive logins: cheap for a login, costly for anyone guessing offline). The
parameters are stored with each hash (``scrypt$n=131072,r=8,p=1$<salt>$<hash>``), so they can
be raised without breaking old accounts: a hash with weaker parameters is replaced at the user's
next successful login (:func:`needs_rehash`). A stored hash asking for more memory than
:data:`SCRYPT_MAXMEM` is refused, not computed. Comparison is constant-time, and an unknown user
costs a hash too, so timing does not tell which names exist. At most :data:`SCRYPT_SLOTS` hashes
run at once in a process (each takes 128 MiB, and a login form is open to anyone: twelve
anonymous attempts at once took 1.4 GiB); an attempt that finds no free slot within
:data:`SCRYPT_WAIT_S` is answered :class:`LoginBusy`, counted like a wrong password, for known
and unknown names alike.

Failed logins are counted per account in the users table (``failed_logins``,
``locked_until_s``), so the throttle holds across browser sessions, dashboard processes and
restarts: after :data:`MAX_FAILURES` consecutive wrong passwords the account is locked for
:data:`LOCKOUT_S`, and every further failure doubles the lock (capped at :data:`MAX_LOCKOUT_S`);
a correct password resets the count. While locked, no password is checked at all
(:class:`LoginThrottled`). Each attempt is counted before its password is hashed, in the
transaction that checks the lock, so concurrent guesses cannot slip past it. Names with no
account are throttled by the same policy in the store too (table ``login_throttle``, one row per
name, keyed by an HMAC-SHA256 of the name under the store's ``login_throttle_key``, so the table
does not list the names tried): every dashboard process, and one restarted, answers a known and
an unknown name alike, and the lock message does not tell which names exist either. Both kinds
forget a count of failures after :data:`FAILURES_FORGOTTEN_S` without a failure (an account at
its next attempt, an unknown name's row is deleted then, which bounds the table to the names
tried within that time); a lock is never that long. A name no account can have is refused
without a hash and without a row.

Each account has a credential generation (``users.credential_gen``), raised by
:meth:`Accounts.set_password` and by disabling the account. A session keeps the generation it
signed in with (:meth:`Accounts.sign_in`) and is only good while it is still the account's
(:meth:`Accounts.session_user`): an admin's password reset (the answer to a stolen password) or
disabling ends every session signed in before it, and enabling the account again does not bring
them back.

Roles: ``auditor`` (claims items, records verdicts), ``admin`` (that, plus gold items and users),
``viewer`` (reads dashboards only). The dashboard checks roles when a page renders; the store
checks them *again inside every write transaction* (:func:`check_actor`), against the role in the
database at that moment, so a bypassed page or a replayed request cannot write.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import threading
import time
import unicodedata
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from auditstream.errors import AuditstreamError, PermissionDenied
from store.schema import THROTTLE_KEY_ROW

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
SCRYPT_MAXMEM = 256 * 1024 * 1024  # 128 * N * r = 128 MiB, plus headroom
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_CHARS = 8
MAX_FAILURES = 5  # consecutive wrong passwords before the first lock
LOCKOUT_S = 30.0  # the first lock; each further failure doubles it
MAX_LOCKOUT_S = 3600.0
FAILURES_FORGOTTEN_S = 24 * 3600.0  # a count of failed logins idle this long starts again at 0
SCRYPT_SLOTS = 2  # scrypt runs at once per process: at most 2 x 128 MiB, however many logins arrive
SCRYPT_WAIT_S = 3.0  # how long an attempt waits for a slot (about five hashes' time) before "busy"
_scrypt_slots = threading.BoundedSemaphore(SCRYPT_SLOTS)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # whole name: fullmatch (a "$" lets "name\n" through)


def look_alike(name: str) -> str:
    """What ``name`` looks like to a person: NFKC, case-folded, with i, l, 1 as one letter and o, 0
    as another. Two accounts never share it (:meth:`Accounts.add_user`), so "alice", "Alice" and
    "aIice" cannot all be accounts; a login still names its account exactly, as typed."""
    return unicodedata.normalize("NFKC", name).casefold().translate(_LOOK_ALIKE)


_LOOK_ALIKE = str.maketrans({"i": "l", "1": "l", "0": "o"})


def valid_name(name: str) -> bool:
    """Whether ``name`` can be an account's name (1-64 of letters, digits, '_.@-', starting with a
    letter or digit; no trailing newline)."""
    return _NAME.fullmatch(name) is not None


class LoginThrottled(AuditstreamError):
    """Too many failed logins for this name: no password is checked until ``retry_after_s`` passed."""

    def __init__(self, name: str, failures: int, retry_after_s: float) -> None:
        self.name, self.failures, self.retry_after_s = name, failures, retry_after_s
        super().__init__(f"too many failed logins for {name!r} ({failures}); try again in {retry_after_s:.0f} s")


class LoginBusy(AuditstreamError):
    """Every scrypt slot stayed taken for :data:`SCRYPT_WAIT_S`: the password was not checked (the
    attempt still counts as a failure); try again in a moment."""

    def __init__(self) -> None:
        super().__init__(f"all {SCRYPT_SLOTS} password-hash slots are busy; try again in a moment")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    """hashlib.scrypt in one of the process's :data:`SCRYPT_SLOTS` slots (:class:`LoginBusy` when
    none frees up in :data:`SCRYPT_WAIT_S`); ValueError for parameters over the memory cap."""
    if not _scrypt_slots.acquire(timeout=SCRYPT_WAIT_S):
        raise LoginBusy()
    try:
        return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=dklen)
    finally:
        _scrypt_slots.release()


def lockout_s(failures: int) -> float:
    """How long an account stays locked after its ``failures``-th consecutive failure (0: not locked)."""
    if failures < MAX_FAILURES:
        return 0.0
    return min(MAX_LOCKOUT_S, LOCKOUT_S * 2.0 ** min(failures - MAX_FAILURES, 32))


class Role(str, Enum):
    AUDITOR = "auditor"
    ADMIN = "admin"
    VIEWER = "viewer"


WRITERS = (Role.AUDITOR, Role.ADMIN)  # may claim items and record verdicts
ADMINS = (Role.ADMIN,)


@dataclass(frozen=True)
class User:
    """An authenticated user. Holds no secret: the hash stays in the database."""

    name: str
    role: Role


class SignedIn(NamedTuple):
    """A user as signed in: who, and the account's credential generation at that moment (the
    session keeps it and asks :meth:`Accounts.session_user` on every render)."""

    user: User
    generation: int


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n=..,r=..,p=..$<salt b64>$<hash b64>`` of ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    n, r, p = SCRYPT_N, SCRYPT_R, SCRYPT_P  # read at call time: the stored string records them
    digest = _scrypt(password, salt, n, r, p, HASH_BYTES)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt$n={n},r={r},p={p}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string
    (:class:`LoginBusy` when no hash slot frees up in time)."""
    try:
        scheme, params, salt_b64, hash_b64 = stored.split("$")
        cost = dict(kv.split("=") for kv in params.split(","))
        n, r, p = int(cost["n"]), int(cost["r"]), int(cost["p"])
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt":
        return False
    try:
        digest = _scrypt(password, salt, n, r, p, len(expected))
    except ValueError:  # parameters over the memory cap or invalid: a tampered row is not computed
        return False
    return hmac.compare_digest(digest, expected)


def needs_rehash(stored: str) -> bool:
    """Whether a stored hash was made with other (older, weaker) parameters than today's."""
    return not stored.startswith(f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}$")


@functools.cache
def _dummy_hash() -> str:
    """A real hash of a random password: verifying an unknown name costs as much as a known one."""
    return hash_password(base64.b64encode(os.urandom(12)).decode())


def _checked(name: str, password: str, stored: str, reserved: tuple[int, float | None], now_s: float) -> bool:
    """Whether ``password`` matches ``stored``, with the attempt already counted (``reserved``:
    failures and lock after it). A wrong one that locked the name, or one no hash slot was free
    for, raises; the same for names with and without an account."""
    failures, locked_until = reserved
    try:
        if check_password(password, stored):
            return True
    except LoginBusy:
        if locked_until is None:
            raise
    if locked_until is not None:
        raise LoginThrottled(name, failures, locked_until - now_s)
    return False


def require_role(user: User | None, *roles: Role | str, action: str = "do this") -> User:
    """``user`` if it has one of ``roles``, else :class:`PermissionDenied` (also for no user)."""
    allowed = tuple(Role(r) for r in roles)
    if user is None or not isinstance(user, User):
        raise PermissionDenied("<anonymous>", None, action, tuple(r.value for r in allowed))
    if user.role not in allowed:
        raise PermissionDenied(user.name, user.role.value, action, tuple(r.value for r in allowed))
    return user


def check_actor(cur, user: User, allowed: tuple[Role, ...], action: str) -> User:
    """Inside a write transaction: the user's *current* role in the database allows ``action``.

    ``cur`` is a :class:`store.backend.Cursor`. A user deleted, disabled or demoted
    since logging in is refused here even if their session still says otherwise.
    """
    require_role(user, *allowed, action=action)
    row = cur.one("SELECT role, disabled FROM {p}users WHERE name = ?", (user.name,))
    role = None if row is None or row[1] else row[0]
    if role not in {r.value for r in allowed}:
        raise PermissionDenied(user.name, role, action, tuple(r.value for r in allowed))
    return user


class Accounts:
    """The users table of one store (``store.accounts``)."""

    def __init__(self, db) -> None:
        self._db = db  # store.backend.Database
        self._throttle_key: bytes | None = None  # the store's login_throttle_key, read once

    def add_user(self, name: str, password: str, role: Role | str, now_s: float | None = None) -> User:
        """Create a user; ``ValueError`` if the name is taken or malformed or the password short."""
        role = Role(role)
        if not isinstance(name, str) or not valid_name(name):
            raise ValueError(f"user name {name!r} must be 1-64 of letters, digits, '_.@-', starting with a letter or digit")
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS}")
        hashed = hash_password(password)  # before the transaction: the slow part holds no lock
        with self._db.write() as cur:
            if self._db.kind == "postgresql":  # two adds of look-alikes at once would both pass the check
                cur.one("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(f"auditstream-users:{self._db.prefix}".encode()),))
            if cur.one("SELECT 1 FROM {p}users WHERE name = ?", (name,)):
                raise ValueError(f"user {name!r} already exists")
            twin = next((n for (n,) in cur.all("SELECT name FROM {p}users") if look_alike(n) == look_alike(name)), None)
            if twin is not None:
                raise ValueError(f"user name {name!r} looks like the existing {twin!r} (case, i/l/1 and o/0 "
                                 "do not tell names apart here); choose another")
            cur.run(
                "INSERT INTO {p}users (name, role, password_hash, created_at_s) VALUES (?, ?, ?, ?)",
                (name, role.value, hashed, time.time() if now_s is None else now_s),
            )
        return User(name, role)

    def set_password(self, name: str, password: str) -> None:
        """An admin's reset: lifts a lock, ends the account's sessions and gives back its leased items."""
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS}")
        hashed = hash_password(password)
        with self._db.write() as cur:
            # A new password (an admin's reset) also lifts a lock: the guesses were against the old
            # one; and it ends every session signed in before it (a new credential generation).
            if cur.run("UPDATE {p}users SET password_hash = ?, failed_logins = 0, locked_until_s = NULL,"
                       " credential_gen = credential_gen + 1 WHERE name = ?", (hashed, name)) != 1:  # fmt: skip
                raise ValueError(f"no user {name!r}")
            _release_leases(cur, name)  # her sessions ended: their items go back to the queue now

    def set_role(self, name: str, role: Role | str, disabled: bool = False) -> None:
        """Change a role or disable an account; takes effect at the user's next render or write.
        Disabling also ends the account's sessions for good (a new credential generation). Disabling,
        or a role below auditor, gives the items leased to the account back to the queue at once
        (in the same transaction: nobody waits --lease-s for a lease nobody can submit)."""
        with self._db.write() as cur:
            if cur.run("UPDATE {p}users SET role = ?, disabled = ?, credential_gen = credential_gen + ? WHERE name = ?",
                       (Role(role).value, int(disabled), int(disabled), name)) != 1:  # fmt: skip
                raise ValueError(f"no user {name!r}")
            if disabled or Role(role) not in WRITERS:  # she can no longer submit: free her items now
                _release_leases(cur, name)

    def verify_password(self, name: str, password: str, now_s: float | None = None) -> User | None:
        """The user if ``password`` is theirs and the account is enabled, else None (see :meth:`sign_in`)."""
        signed = self.sign_in(name, password, now_s)
        return None if signed is None else signed.user

    def sign_in(self, name: str, password: str, now_s: float | None = None) -> SignedIn | None:
        """The user and their credential generation if ``password`` is theirs and the account is
        enabled, else None.

        Raises :class:`LoginThrottled` while the name is locked (before checking anything) and on
        the failure that locks it, :class:`LoginBusy` when no hash slot freed up in time (counted
        as a failure: a flood cannot outwait the lock). A wrong password counts a failure, a right
        one resets the count.

        The attempt is counted as a failure *before* the slow hash runs, in the same write
        transaction that checks the lock, and taken back when the password is right: concurrent
        guesses cannot all pass the check while the first ones are still hashing, so at most
        :data:`MAX_FAILURES` passwords are checked before the lock. A name that no account can
        have (not 1-64 of letters, digits, '_.@-') is refused at once, without a hash and without
        being remembered.
        """
        now_s = time.time() if now_s is None else now_s
        if not isinstance(name, str) or not valid_name(name):
            return None
        with self._db.write() as cur:
            row = cur.one("SELECT role, password_hash, disabled, failed_logins, locked_until_s, credential_gen, last_failed_s"
                          f" FROM {{p}}users WHERE name = ?{self._db.row_lock}", (name,))  # fmt: skip
            if row is None:
                reserved = self._reserve_unknown(cur, name, now_s)
            else:
                role, stored, disabled, failures, locked_until, generation, last_failed = row
                if locked_until is not None and float(locked_until) > now_s:
                    raise LoginThrottled(name, int(failures), float(locked_until) - now_s)
                if last_failed is not None and float(last_failed) <= now_s - FAILURES_FORGOTTEN_S:
                    failures = 0  # as an unknown name's row is deleted then
                reserved = self._reserve_failure(cur, name, int(failures), now_s)
        if row is None:  # the same work and the same answers as a known name
            _checked(name, password, _dummy_hash(), reserved, now_s)
            return None
        if not _checked(name, password, stored, reserved, now_s):
            return None
        with self._db.write() as cur:  # the right password: the reserved failure and any lock go
            cur.run("UPDATE {p}users SET failed_logins = 0, locked_until_s = NULL WHERE name = ?", (name,))
        if needs_rehash(stored):  # the password is known right now: store it with today's parameters
            try:
                rehashed = hash_password(password)  # before the transaction: the slow part holds no lock
            except LoginBusy:
                rehashed = None  # no hash slot now: the next login upgrades it
            if rehashed is not None:
                with self._db.write() as cur:  # unless the hash changed meanwhile (a reset): then it stays
                    cur.run("UPDATE {p}users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                            (rehashed, name, stored))
        # The generation read with the hash: a reset after this read ends the new session at once.
        return None if disabled else SignedIn(User(name, Role(role)), int(generation))

    @staticmethod
    def _reserve_failure(cur, name: str, failures: int, now_s: float) -> tuple[int, float | None]:
        """Inside the transaction that checked the lock: count this attempt as a failure now."""
        failures += 1
        wait_s = lockout_s(failures)
        locked_until = now_s + wait_s if wait_s > 0 else None
        cur.run("UPDATE {p}users SET failed_logins = ?, locked_until_s = ?, last_failed_s = ? WHERE name = ?",
                (failures, locked_until, now_s, name))
        return failures, locked_until

    def _reserve_unknown(self, cur, name: str, now_s: float) -> tuple[int, float | None]:
        """A name with no account, inside the transaction that found no account: the same check
        and count as :meth:`_reserve_failure`, in ``login_throttle`` (raises
        :class:`LoginThrottled` while the name is locked). Rows idle for
        :data:`FAILURES_FORGOTTEN_S` are deleted first, this name's included (an account's count
        is forgotten after as long)."""
        key = hmac.new(self._name_key(cur), name.encode(), hashlib.sha256).hexdigest()
        cur.run("DELETE FROM {p}login_throttle WHERE last_failed_s <= ?", (now_s - FAILURES_FORGOTTEN_S,))
        # Insert first: two replicas counting the same new name at once meet on the primary key,
        # and the row read next is locked (PostgreSQL) for the rest of the transaction.
        cur.run("INSERT INTO {p}login_throttle (name_key, failed_logins, locked_until_s, last_failed_s)"
                " VALUES (?, 0, NULL, ?) ON CONFLICT (name_key) DO NOTHING", (key, now_s))  # fmt: skip
        failures, locked_until = cur.one("SELECT failed_logins, locked_until_s FROM {p}login_throttle"
                                         f" WHERE name_key = ?{self._db.row_lock}", (key,))  # fmt: skip
        if locked_until is not None and float(locked_until) > now_s:
            raise LoginThrottled(name, int(failures), float(locked_until) - now_s)
        failures = int(failures) + 1
        wait_s = lockout_s(failures)
        locked_until = now_s + wait_s if wait_s > 0 else None
        cur.run("UPDATE {p}login_throttle SET failed_logins = ?, locked_until_s = ?, last_failed_s = ? WHERE name_key = ?",
                (failures, locked_until, now_s, key))  # fmt: skip
        return failures, locked_until

    def _name_key(self, cur) -> bytes:
        """The store's HMAC key of unknown names (``meta`` ``login_throttle_key``), made here if a
        store opened without the upgrade lacks it."""
        if self._throttle_key is None:
            cur.run("INSERT INTO {p}meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (THROTTLE_KEY_ROW, os.urandom(32).hex()))
            self._throttle_key = bytes.fromhex(cur.one("SELECT value FROM {p}meta WHERE key = ?", (THROTTLE_KEY_ROW,))[0])
        return self._throttle_key

    def login_state(self, name: str) -> tuple[int, float | None]:
        """(consecutive failures, locked until) of an account, for admins and tests."""
        rows = self._db.query("SELECT failed_logins, locked_until_s FROM {p}users WHERE name = ?", (name,))
        if not rows:
            raise ValueError(f"no user {name!r}")
        return int(rows[0][0]), None if rows[0][1] is None else float(rows[0][1])

    def get(self, name: str) -> User | None:
        signed = self.session(name)
        return None if signed is None else signed.user

    def session(self, name: str) -> SignedIn | None:
        """An enabled account as a session would start now (single sign-on: the identity provider
        checked who it is), with its credential generation; None for no enabled account."""
        rows = self._db.query("SELECT role, credential_gen FROM {p}users WHERE name = ? AND disabled = 0", (name,))
        return SignedIn(User(name, Role(rows[0][0])), int(rows[0][1])) if rows else None

    def session_user(self, name: str, generation: int | None) -> User | None:
        """The user of a session that signed in at credential ``generation``, as the store knows
        them now; None when the account is gone or disabled, or its password was changed (or it
        was disabled) since."""
        signed = self.session(name)
        return signed.user if signed is not None and signed.generation == generation else None

    def list_users(self) -> list[tuple[User, bool]]:
        """Every account as (user, disabled), by name."""
        rows = self._db.query("SELECT name, role, disabled FROM {p}users ORDER BY name")
        return [(User(name, Role(role)), bool(disabled)) for name, role, disabled in rows]


def _release_leases(cur, name: str) -> None:
    """Give every open item leased to ``name`` back to the queue (inside the caller's transaction)."""
    cur.run("UPDATE {p}items SET lease_owner = NULL, lease_expires_s = NULL WHERE state = 'open' AND lease_owner = ?",
            (name,))  # fmt: skip
