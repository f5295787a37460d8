"""Local accounts of the audit dashboard, stored in the audit store's ``users`` table.

Passwords are kept only as slow salted hashes: scrypt (RFC 7914) with a 16-byte random salt per
user and N=2**15, r=8, p=1 (32 MiB and about 0.1-0.3 s per hash on one core: cheap for a login,
costly for anyone guessing offline). The parameters are stored with each hash
(``scrypt$n=32768,r=8,p=1$<salt>$<hash>``), so they can be raised later without breaking old
accounts. Comparison is constant-time, and an unknown user costs a hash too, so timing does not
tell which names exist.

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
import time
from dataclasses import dataclass
from enum import Enum

from auditstream.errors import PermissionDenied

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024  # 128 * N * r = 32 MiB, plus headroom
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_CHARS = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


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


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n=..,r=..,p=..$<salt b64>$<hash b64>`` of ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    n, r, p = SCRYPT_N, SCRYPT_R, SCRYPT_P  # read at call time: the stored string records them
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=HASH_BYTES)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt$n={n},r={r},p={p}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    try:
        scheme, params, salt_b64, hash_b64 = stored.split("$")
        cost = dict(kv.split("=") for kv in params.split(","))
        n, r, p = int(cost["n"]), int(cost["r"]), int(cost["p"])
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(digest, expected)


@functools.cache
def _dummy_hash() -> str:
    """A real hash of a random password: verifying an unknown name costs as much as a known one."""
    return hash_password(base64.b64encode(os.urandom(12)).decode())


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

    ``cur`` is a :class:`monitor.store.backend.Cursor`. A user deleted, disabled or demoted
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
        self._db = db  # monitor.store.backend.Database

    def add_user(self, name: str, password: str, role: Role | str, now_s: float | None = None) -> User:
        """Create a user; ``ValueError`` if the name is taken or malformed or the password short."""
        role = Role(role)
        if not _NAME.match(name):
            raise ValueError(f"user name {name!r} must be 1-64 of letters, digits, '_.@-', starting with a letter or digit")
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS}")
        hashed = hash_password(password)  # before the transaction: the slow part holds no lock
        with self._db.write() as cur:
            if cur.one("SELECT 1 FROM {p}users WHERE name = ?", (name,)):
                raise ValueError(f"user {name!r} already exists")
            cur.run(
                "INSERT INTO {p}users (name, role, password_hash, created_at_s) VALUES (?, ?, ?, ?)",
                (name, role.value, hashed, time.time() if now_s is None else now_s),
            )
        return User(name, role)

    def set_password(self, name: str, password: str) -> None:
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS}")
        hashed = hash_password(password)
        with self._db.write() as cur:
            if cur.run("UPDATE {p}users SET password_hash = ? WHERE name = ?", (hashed, name)) != 1:
                raise ValueError(f"no user {name!r}")

    def set_role(self, name: str, role: Role | str, disabled: bool = False) -> None:
        """Change a role or disable an account; takes effect at the user's next write."""
        with self._db.write() as cur:
            if cur.run("UPDATE {p}users SET role = ?, disabled = ? WHERE name = ?", (Role(role).value, int(disabled), name)) != 1:
                raise ValueError(f"no user {name!r}")

    def verify_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs and the account is enabled, else None."""
        rows = self._db.query("SELECT role, password_hash, disabled FROM {p}users WHERE name = ?", (name,))
        if not rows:
            check_password(password, _dummy_hash())
            return None
        role, stored, disabled = rows[0]
        if not check_password(password, stored) or disabled:
            return None
        return User(name, Role(role))

    def get(self, name: str) -> User | None:
        rows = self._db.query("SELECT role FROM {p}users WHERE name = ? AND disabled = 0", (name,))
        return User(name, Role(rows[0][0])) if rows else None

    def list_users(self) -> list[tuple[User, bool]]:
        """Every account as (user, disabled), by name."""
        rows = self._db.query("SELECT name, role, disabled FROM {p}users ORDER BY name")
        return [(User(name, Role(role)), bool(disabled)) for name, role, disabled in rows]
