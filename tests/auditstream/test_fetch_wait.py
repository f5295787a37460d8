"""How long a consumer lets the broker hold a fetch: short for Kafka and the in-memory embedded
broker, long enough for the durable one's storage listing (auditstream/kafka/interface.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditstream.errors import ConfigError
from auditstream.kafka import BROKER_STATE_FILE, DURABLE_FETCH_MAX_WAIT_MS, FETCH_MAX_WAIT_MS, fetch_wait_ms
from auditstream.settings import Settings

BOOTSTRAP = "127.0.0.1:19092"


def state_dir_with_broker(tmp_path: Path, storage: str, bootstrap: str = BOOTSTRAP) -> Path:
    (tmp_path / BROKER_STATE_FILE).write_text(json.dumps(
        {"pid": 1, "port": 19092, "bootstrap": bootstrap, "log": "", "storage": storage}))
    return tmp_path


def test_the_durable_embedded_broker_gets_the_long_wait(tmp_path: Path) -> None:
    settings = Settings(state_dir=state_dir_with_broker(tmp_path, "s3://auditstream/"))
    assert fetch_wait_ms(settings, BOOTSTRAP) == DURABLE_FETCH_MAX_WAIT_MS


@pytest.mark.parametrize("storage, bootstrap", [
    ("memory://tansu/", BOOTSTRAP),  # in memory: listings are cheap
    ("s3://auditstream/", "127.0.0.1:29092"),  # another broker than this state dir's durable one
])
def test_every_other_broker_gets_the_short_wait(tmp_path: Path, storage: str, bootstrap: str) -> None:
    settings = Settings(state_dir=state_dir_with_broker(tmp_path, storage))
    assert fetch_wait_ms(settings, bootstrap) == FETCH_MAX_WAIT_MS


@pytest.mark.parametrize("state", ["", "not json", "[]", '{"bootstrap": "127.0.0.1:19092"}', '{"storage": 3}'])
def test_no_or_a_damaged_state_file_means_the_short_wait(tmp_path: Path, state: str) -> None:
    if state:
        (tmp_path / BROKER_STATE_FILE).write_text(state)
    assert fetch_wait_ms(Settings(state_dir=tmp_path), BOOTSTRAP) == FETCH_MAX_WAIT_MS


def test_the_setting_wins_and_is_checked(tmp_path: Path) -> None:
    durable = state_dir_with_broker(tmp_path, "s3://auditstream/")
    assert fetch_wait_ms(Settings(state_dir=durable, fetch_max_wait_ms=50), BOOTSTRAP) == 50
    assert Settings.from_env({"AUDITSTREAM_FETCH_MAX_WAIT_MS": "250"}).fetch_max_wait_ms == 250
    with pytest.raises(ConfigError, match="fetch_max_wait_ms"):
        Settings(fetch_max_wait_ms=-1)
