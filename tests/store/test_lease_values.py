"""Lease lengths are finite positive seconds everywhere they enter: ``claim``, ``renew``, the
leader lease and the dashboard's ``--lease-s``. ``inf`` leased an item for ever (the queue never
got it back), ``nan`` made a lease that neither expires nor compares; both were accepted."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st
from tests.store.store_factories import add_users, audit_item

from auditstream.errors import ConfigError
from dashboards.config import DashboardConfig
from store.records import check_lease_s

BAD = [math.inf, -math.inf, math.nan, 0.0, -1.0, 0, True, "60", None]


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-10**6, max_value=10**6))
def test_check_lease_s_accepts_exactly_finite_positive_numbers(value) -> None:
    if math.isfinite(value) and value > 0:
        assert check_lease_s("lease_s", value) == float(value)
    else:
        with pytest.raises(ConfigError, match="finite number of seconds > 0"):
            check_lease_s("lease_s", value)


@pytest.mark.parametrize("lease_s", BAD, ids=repr)
def test_claim_renew_and_leadership_refuse_a_bad_lease_and_change_nothing(store, lease_s) -> None:
    (alice,) = add_users(store, "alice")
    store.ingest(audit_item("r1"), 100.0)
    with pytest.raises(ConfigError, match="lease_s"):
        store.claim(alice, lease_s, 100.0)
    assert store.items()[0].lease_owner is None  # nothing was leased
    claim = store.claim(alice, 60.0, 100.0)
    with pytest.raises(ConfigError, match="lease_s"):
        store.renew(claim.item_id, alice, lease_s, 110.0)
    assert store.item(claim.item_id).lease_expires_s == 160.0  # the lease is as it was
    with pytest.raises(ConfigError, match="leader lease_s"):
        store.leadership(lease_s=lease_s)


@pytest.mark.parametrize("lease_s", [math.inf, math.nan, -1.0, 0.0, 9.9, 86_401.0], ids=repr)
def test_dashboard_config_refuses_a_lease_outside_its_range(lease_s: float) -> None:
    with pytest.raises(ConfigError, match="--lease-s"):
        DashboardConfig(lease_s=lease_s)
    assert DashboardConfig(lease_s=10.0).lease_s == 10.0 and DashboardConfig(lease_s=86_400.0).lease_s == 86_400.0
