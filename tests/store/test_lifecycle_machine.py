"""A Hypothesis state machine over the audit lifecycle — ingest, claim, time passing (leases
expire), verdicts (and double submits), releases, label export — on SQLite and on PostgreSQL.

A plain-Python model of the queue predicts every answer of the store (which item a claim with
or without a route filter gets, whether a verdict is accepted or refused), and the invariants
compare the whole store with it after every step: each (request, version) is at most one item,
each item has at most the one lease the model expects, an auditor at most one live lease, verdict counts and outbox rows follow the verdicts, and an export
holds exactly the decisive verdicts.

Default run: ~1,600 steps per backend (fits the test budget). The reliability check of
shared/RELIABILITY.md (>= 10k steps) is ``AUDITSTREAM_TEST_LIFECYCLE_EXAMPLES=250``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tests.store.store_factories import POSTGRES_URL, add_users, audit_item, postgres_unavailable

from auditstream import topics
from auditstream.errors import LeaseNotHeld, PermissionDenied
from auditstream.wire import Route, VerdictKind
from store.accounts import Role
from monitor.labels import export_labels, read_labels
from store import open_store

EXAMPLES = int(os.environ.get("AUDITSTREAM_TEST_LIFECYCLE_EXAMPLES", "40"))
STEPS = 40
AUDITORS = ("alice", "bob")


@pytest.fixture(autouse=True)
def _cheap_hashes(fast_hashes: None) -> None:
    """Accounts are not under test here (tests/store/test_accounts.py tests hashing)."""


class AuditLifecycle(RuleBasedStateMachine):
    BACKEND = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        if self.BACKEND == "sqlite":
            self.store = open_store(f"sqlite:///{self.tmp / 'audit.db'}", create=True)
        else:
            self.store = open_store(POSTGRES_URL, table_prefix=f"sm{os.getpid()}_{id(self) % 10**8}_", create=True)
        self.users = {u.name: u for u in add_users(self.store, *AUDITORS)}
        self.users.update({u.name: u for u in add_users(self.store, "vera", role=Role.VIEWER)})
        self.now = 1_000.0
        self.items: dict[int, dict] = {}  # item_id -> model of the row
        self.keys: set[tuple[str, str]] = set()
        self.verdicts: list[tuple[str, int, str, VerdictKind]] = []
        self.last: tuple | None = None  # (verdict_id, item_id, user, kind, corrected) of the last recorded verdict

    def teardown(self) -> None:
        self.store.drop_tables()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- model helpers ------------------------------------------------------------------------

    def _live(self, item: dict) -> bool:
        return item["owner"] is not None and item["expires"] > self.now

    def _expected_claim(self, user: str, route: Route | None) -> tuple[int | None, list[int]]:
        """(the item a claim with this route filter gets, the live leases of ``user`` it releases)."""
        mine = [i for i, it in self.items.items() if it["state"] == "open" and it["owner"] == user and self._live(it)]
        held = [i for i in mine if route is None or self.items[i]["route"] is route]
        if held:
            return min(held), [i for i in mine if i != min(held)]
        free = [(it["priority"], i) for i, it in self.items.items()
                if it["state"] == "open" and not self._live(it) and user not in it["reviewers"]
                and (route is None or it["route"] is route)]  # fmt: skip
        return (min(free)[1] if free else None), mine

    # --- rules --------------------------------------------------------------------------------

    @rule(request=st.sampled_from([f"r{i}" for i in range(6)]), version=st.sampled_from(["v1", "v2"]),
          route=st.sampled_from([Route.HUMAN, Route.AUTO_QC]))  # fmt: skip
    def ingest(self, request: str, version: str, route: Route) -> None:
        new = self.store.ingest(audit_item(request, route, version=version, output=f"out-{request}"), self.now)
        assert new == ((request, version) not in self.keys)
        if new:
            row = self.store.items(limit=1)[0]
            assert (row.request_id, row.model_version) == (request, version)
            self.keys.add((request, version))
            self.items[row.item_id] = {"state": "open", "owner": None, "expires": None, "reviewers": set(),
                                       "priority": 0 if route is Route.HUMAN else 1, "route": route}  # fmt: skip

    @rule(user=st.sampled_from(AUDITORS + ("vera",)), lease_s=st.sampled_from([5.0, 30.0]),
          route=st.sampled_from([None, None, Route.HUMAN, Route.AUTO_QC]))  # fmt: skip
    def claim(self, user: str, lease_s: float, route: Route | None) -> None:
        if user == "vera":
            with pytest.raises(PermissionDenied):
                self.store.claim(self.users[user], lease_s, self.now, route=route)
            return
        expected, released = self._expected_claim(user, route)
        claim = self.store.claim(self.users[user], lease_s, self.now, route=route)
        assert (claim and claim.item_id) == expected
        for item_id in released:  # a held item the filter leaves out goes back to the queue
            self.items[item_id].update(owner=None, expires=None)
        if claim is not None:
            self.items[expected].update(owner=user, expires=self.now + lease_s)

    @rule(dt=st.sampled_from([1.0, 4.0, 10.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.items)
    @rule(data=st.data(), user=st.sampled_from(AUDITORS + ("vera",)),
          kind=st.sampled_from(list(VerdictKind)), prefer_held=st.booleans())  # fmt: skip
    def verdict(self, data, user: str, kind: VerdictKind, prefer_held: bool) -> None:
        held = sorted(i for i, it in self.items.items() if it["owner"] == user and self._live(it))
        item_id = held[0] if prefer_held and held else data.draw(st.sampled_from(sorted(self.items)))
        item = self.items[item_id]
        corrected = "fixed" if kind is VerdictKind.CORRECT else None
        verdict_id = self.store.new_verdict_id()
        if user == "vera":
            with pytest.raises(PermissionDenied):
                self.store.record_verdict(verdict_id, item_id, self.users[user], kind, corrected, self.now)
            return
        if item["state"] != "open" or item["owner"] != user or not self._live(item):
            with pytest.raises(LeaseNotHeld):
                self.store.record_verdict(verdict_id, item_id, self.users[user], kind, corrected, self.now)
            return
        result = self.store.record_verdict(verdict_id, item_id, self.users[user], kind, corrected, self.now)
        assert result.recorded and result.item_done == (kind is not VerdictKind.SKIP)
        item.update(owner=None, expires=None, state="open" if kind is VerdictKind.SKIP else "done")
        item["reviewers"].add(user)
        self.verdicts.append((verdict_id, item_id, user, kind))
        self.last = (verdict_id, item_id, user, kind, corrected)

    @precondition(lambda self: self.last is not None)
    @rule()
    def double_submit(self) -> None:
        verdict_id, item_id, user, kind, corrected = self.last
        result = self.store.record_verdict(verdict_id, item_id, self.users[user], kind, corrected, self.now)
        assert not result.recorded and result.verdict.verdict_id == verdict_id

    @precondition(lambda self: self.items)
    @rule(data=st.data(), user=st.sampled_from(AUDITORS))
    def release(self, data, user: str) -> None:
        item_id = data.draw(st.sampled_from(sorted(self.items)))
        released = self.store.release(item_id, self.users[user])
        assert released == (self.items[item_id]["owner"] == user)
        if released:
            self.items[item_id].update(owner=None, expires=None)

    @rule(fmt=st.sampled_from(["jsonl", "csv"]))
    def export(self, fmt: str) -> None:
        out = self.tmp / f"labels.{fmt}"
        n = export_labels(self.store, out, fmt=fmt, progress=False)
        rows = read_labels(out)
        decisive = {(v, i, u, k.value) for v, i, u, k in self.verdicts if k is not VerdictKind.SKIP}
        assert n == len(rows) == len(decisive)
        by_request = {i: r for i, r in ((i, self.store.item(i).request_id) for _, i, _, _ in self.verdicts)}
        assert {(r["verdict_id"], r["auditor"], r["verdict_kind"]) for r in rows} == {(v, u, k) for v, _, u, k in decisive}
        for row in rows:
            assert row["human_label"] == {"accept": row["model_output"], "correct": "fixed", "reject": None}[row["verdict_kind"]]
            assert row["request_id"] in by_request.values()

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def one_item_per_request_and_version(self) -> None:
        rows = self.store.items(limit=1000)
        keys = [(r.request_id, r.model_version) for r in rows]
        assert len(keys) == len(set(keys)) and set(keys) == self.keys

    @invariant()
    def leases_and_states_are_as_modelled(self) -> None:
        for row in self.store.items(limit=1000):
            it = self.items[row.item_id]
            assert (row.state, row.lease_owner, row.lease_expires_s) == (it["state"], it["owner"], it["expires"])
        assert self.store.queue_depth() == sum(it["state"] == "open" for it in self.items.values())

    @invariant()
    def an_auditor_holds_one_live_lease_at_most(self) -> None:
        owners = Counter(r.lease_owner for r in self.store.items(limit=1000)
                         if r.state == "open" and r.lease_owner and r.lease_expires_s > self.now)  # fmt: skip
        assert all(n == 1 for n in owners.values()), owners

    @invariant()
    def verdicts_and_outbox_follow_the_history(self) -> None:
        assert len(self.store.verdicts()) == len(self.verdicts)
        counts = Counter(k for _, _, _, k in self.verdicts)
        assert self.store.verdict_counts() == {k: counts.get(k, 0) for k in VerdictKind}
        outbox = Counter(r.topic for r in self.store.pending_outbox(limit=10_000))
        decisions = sum(k is not VerdictKind.SKIP and self.items[i]["route"] is Route.HUMAN for _, i, _, k in self.verdicts)
        assert outbox == Counter({topics.VERDICTS: len(self.verdicts), topics.DECISIONS: decisions}) - Counter()


_SETTINGS = dict(stateful_step_count=STEPS, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class SQLiteLifecycle(AuditLifecycle):
    BACKEND = "sqlite"


class PostgresLifecycle(AuditLifecycle):
    BACKEND = "postgres"


TestSQLiteLifecycle = SQLiteLifecycle.TestCase
TestSQLiteLifecycle.settings = settings(max_examples=EXAMPLES, **_SETTINGS)
TestPostgresLifecycle = pytest.mark.postgres(
    pytest.mark.skipif(bool(postgres_unavailable()), reason=postgres_unavailable() or "")(PostgresLifecycle.TestCase)
)
TestPostgresLifecycle.settings = settings(max_examples=max(10, EXAMPLES // 2), **_SETTINGS)
