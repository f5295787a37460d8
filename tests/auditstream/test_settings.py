"""Settings come from ``AUDITSTREAM_*`` variables once; a bad value names the variable and what
it expects; the repr never shows a password."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from auditstream import topics
from auditstream.errors import ConfigError
from auditstream.settings import Settings, redact_url


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.kafka_client == "confluent" and settings.partitions == 12
    assert settings.resolved_store_url == "sqlite:///.auditstream/audit.db"


def test_every_field_type_is_parsed_from_the_environment():
    env = {
        "AUDITSTREAM_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "AUDITSTREAM_KAFKA_CLIENT": "kafka-python",
        "AUDITSTREAM_PARTITIONS": "3",
        "AUDITSTREAM_MODELS_DIR": "/srv/models",
        "AUDITSTREAM_QC_RATE": "0.1",
        "AUDITSTREAM_MAX_WAIT_MS": "0",
        "AUDITSTREAM_LOG_LEVEL": "debug",
        "OTHER_PARTITIONS": "99",  # not ours
    }
    settings = Settings.from_env(env)
    assert settings.bootstrap_servers == "k1:9092,k2:9092" and settings.kafka_client == "kafka-python"
    assert settings.partitions == 3 and settings.qc_rate == 0.1 and settings.max_wait_ms == 0
    assert settings.models_dir == Path("/srv/models") and isinstance(settings.models_dir, Path)


def test_overrides_win_over_the_environment_and_none_means_unset():
    settings = Settings.from_env({"AUDITSTREAM_PARTITIONS": "3"}, partitions=5, max_batch_size=None)
    assert settings.partitions == 5 and settings.max_batch_size == 64


@pytest.mark.parametrize(
    "variable,value,expected",
    [
        ("AUDITSTREAM_PARTITIONS", "twelve", "an integer"),
        ("AUDITSTREAM_PARTITIONS", "1.5", "an integer"),
        ("AUDITSTREAM_PARTITIONS", "0", "an integer from 1 to 10000"),
        ("AUDITSTREAM_MAX_BATCH_SIZE", "-4", "an integer from 1 to 65536"),
        ("AUDITSTREAM_MAX_WAIT_MS", "-1", "an integer from 0 to 600000"),
        ("AUDITSTREAM_QC_RATE", "2%", "a number"),
        ("AUDITSTREAM_QC_RATE", "1.5", "a probability in [0, 1]"),
        ("AUDITSTREAM_QC_RATE", "nan", "a probability in [0, 1]"),
        ("AUDITSTREAM_KAFKA_CLIENT", "librdkafka", "'kafka-python' or 'confluent'"),
        ("AUDITSTREAM_HEARTBEAT_INTERVAL_MS", "5000", "at most a third of session_timeout_ms"),
        ("AUDITSTREAM_SESSION_TIMEOUT_MS", "0", "an integer from 1 to 3600000"),
        ("AUDITSTREAM_MAX_POLL_INTERVAL_MS", "1000", "at least session_timeout_ms"),
        ("AUDITSTREAM_DELIVERY_TIMEOUT_S", "0", "seconds > 0 and under max_poll_interval_ms"),
        ("AUDITSTREAM_DELIVERY_TIMEOUT_S", "600", "seconds > 0 and under max_poll_interval_ms"),
        ("AUDITSTREAM_METRICS_PORT", "70000", "a TCP port in [0, 65535]"),
        ("AUDITSTREAM_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, WARN, ERROR, CRITICAL"),
    ],
)
def test_bad_value_names_the_variable_and_what_it_expects(variable, value, expected):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert info.value.name == variable and info.value.expected.startswith(expected)
    assert str(info.value) == f"invalid {variable}={info.value.value!r}: expected {info.value.expected}"


def test_bad_override_names_the_field():
    with pytest.raises(ConfigError, match=r"invalid partitions=0"):
        Settings.from_env({}, partitions=0)


def test_repr_hides_the_store_password():
    settings = Settings(store_url="postgresql://auditor:hunter2@db:5432/audit")
    assert "hunter2" not in repr(settings) and "auditor:***@db" in repr(settings)
    assert settings.resolved_store_url.endswith("hunter2@db:5432/audit")  # the real value is intact
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_topic_names():
    settings = Settings(topic_prefix="t")
    assert settings.topic(topics.PREDICTIONS) == "t.predictions"
    assert settings.request_topic("digits") == "t.requests.digits"
    names = topics.all_topics(settings, ["digits"])
    assert "t.requests.digits" in names and "t.dead-letter" in names and len(names) == len(set(names))


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:s3/cr@t@h:5432/db", "postgresql://u:***@h:5432/db"),  # '/' and '@' in the password
        ("postgresql+psycopg://u:s3cret@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u@h/db?password=x&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db?sslpassword=zz&sslkey=/k", "postgresql://u@h/db?sslpassword=***&sslkey=***"),
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("postgresql://u:s3#zz@h/db", "postgresql://u:***@h/db"),  # '#' in the password
        ("postgresql://u:s3?zz@h/db", "postgresql://u:***@h/db"),  # '?' in the password
        ("postgresql://u:s3?z@z@h/db?password=zz", "postgresql://u:***@h/db?password=***"),
        ("postgresql://u@h/db?user=a@b&password=s3zz", "postgresql://u@h/db?user=a@b&password=***"),
    ],
)
def test_redact_url_hides_every_secret(url, shown):
    assert redact_url(url) == shown
    assert "s3" not in redact_url(url) and "zz" not in redact_url(url)


@given(st.builds(
    Settings,
    bootstrap_servers=st.sampled_from(["", "kafka-1:9092,kafka-2:9092"]),
    kafka_client=st.sampled_from(["kafka-python", "confluent"]),
    partitions=st.integers(1, 64),
    models_dir=st.sampled_from([Path("models"), Path("/tmp/a b/models")]),
    store_url=st.sampled_from(["", "postgresql://u:p@h:5432/db"]),
    qc_rate=st.floats(0.0, 1.0),
    qc_salt=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20),
    triage_policy=st.sampled_from(["uniform", "risk-weighted", "no-qc"]),
    auto_tighten=st.booleans(),
    metrics_port=st.integers(0, 65535),
))
def test_to_env_round_trips_through_from_env(settings: Settings) -> None:
    """What a parent hands a child process (``to_env``) is exactly what the child rebuilds."""
    env = settings.to_env()
    assert set(env) == {"AUDITSTREAM_" + f.name.upper() for f in dataclasses.fields(Settings)}
    assert Settings.from_env(env) == settings


@hypothesis_settings(max_examples=400, deadline=None)
@given(password=st.text(alphabet=st.sampled_from("ab1?=&@/#:%+ ") | st.characters(codec="ascii", exclude_categories=("Cc",)),
                        min_size=1, max_size=24),
       query=st.sampled_from(["", "?sslmode=require", "?application_name=a@b", "?sslpassword=Q7Q7&sslmode=verify-full"]),
       port=st.sampled_from(["", ":5432"]))
def test_redact_url_never_shows_a_password_whatever_it_holds(password: str, query: str, port: str) -> None:
    """Review 2026-12-04: a password holding '?' and then '=' or '&' (``pw?q=1``, which libpq takes)
    was printed whole, in Settings' repr and every store error. Whatever the password holds,
    nothing of it is shown (a marker on each side would show any part of it)."""
    url = f"postgresql://app:ZX{password}XZ@db.example{port}/audit{query}"
    shown = redact_url(url)
    assert "ZX" not in shown and "XZ" not in shown and "Q7" not in shown, shown
    assert shown.startswith("postgresql://app:***@")


def test_a_real_cluster_with_the_public_qc_salt_is_warned_about(tmp_path):
    """The public default salt lets a producer pick request ids that are never QC-sampled: fine on
    the embedded broker (demo, tests), warned about by serve and monitor on a real cluster."""
    from auditstream.settings import DEFAULT_QC_SALT

    assert Settings(qc_salt=DEFAULT_QC_SALT).public_qc_salt_warning() is None  # embedded broker
    assert Settings(bootstrap_servers="kafka:9092", qc_salt="s3cret").public_qc_salt_warning() is None
    warning = Settings(bootstrap_servers="kafka:9092", state_dir=tmp_path).public_qc_salt_warning()
    assert warning is not None and "AUDITSTREAM_QC_SALT" in warning
    # the embedded broker's address given explicitly (a demo's children): no warning
    (tmp_path / "broker.json").write_text('{"pid": 0, "bootstrap": "127.0.0.1:29092"}')
    assert Settings(bootstrap_servers="127.0.0.1:29092", state_dir=tmp_path).public_qc_salt_warning() is None
    env = {**os.environ, "AUDITSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1", "AUDITSTREAM_MODELS_DIR": str(tmp_path),
           "AUDITSTREAM_STATE_DIR": str(tmp_path / "state")}
    env.pop("AUDITSTREAM_QC_SALT", None)
    for salt, warned in ((None, True), ("s3cret", False)):
        if salt:
            env["AUDITSTREAM_QC_SALT"] = salt
        done = subprocess.run([sys.executable, "-m", "auditstream.cli", "serve", "--model", "absent"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "Traceback" not in done.stderr  # no such model: refused after the warning
        assert ("AUDITSTREAM_QC_SALT is the public default" in done.stderr) == warned, done.stderr


def test_a_misspelt_variable_is_warned_about_with_the_closest_setting(monkeypatch, caplog) -> None:
    """Before, AUDITSTREAM_BOOTSTRAP_SERVER (one S short) was silently ignored: serve ran on the
    embedded broker, AUDITSTREAM_STORE_UR left the local SQLite in use."""
    import auditstream.settings as settings_module

    monkeypatch.setattr(settings_module, "_warned_unknown", set())
    env = {"AUDITSTREAM_BOOTSTRAP_SERVER": "kafka-1:9092", "AUDITSTREAM_STORE_UR": "postgresql://db/audit",
           "AUDITSTREAM_FROM_THE_FUTURE": "1", "AUDITSTREAM_TEST_POSTGRES_URL": "postgresql://t",
           "AUDITSTREAM_MODELS_DIR": "m", "OTHER_THING": "x"}
    with caplog.at_level("WARNING", logger="auditstream.settings"):
        settings = Settings.from_env(env)
        Settings.from_env(env)  # once per process, however often the settings are built
    assert settings.bootstrap_servers == "" and str(settings.models_dir) == "m"  # a warning, not a refusal
    assert [r.getMessage() for r in caplog.records] == [
        "AUDITSTREAM_BOOTSTRAP_SERVER is not an auditstream setting and is ignored: did you mean "
        "AUDITSTREAM_BOOTSTRAP_SERVERS?",
        "AUDITSTREAM_FROM_THE_FUTURE is not an auditstream setting and is ignored: the settings are listed in "
        "auditstream/settings.py",
        "AUDITSTREAM_STORE_UR is not an auditstream setting and is ignored: did you mean AUDITSTREAM_STORE_URL?",
    ]


def test_the_command_line_warns_once_per_misspelt_variable(tmp_path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
           "AUDITSTREAM_BOOTSTRAP_SERVER": "kafka-1:9092", "AUDITSTREAM_MODELS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "auditstream.cli", "serve", "--model", "absent"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("AUDITSTREAM_BOOTSTRAP_SERVER is not an auditstream setting") == 1, done.stderr
    assert "did you mean AUDITSTREAM_BOOTSTRAP_SERVERS?" in done.stderr


def test_the_variables_read_outside_the_settings_are_listed() -> None:
    """Every AUDITSTREAM_* name the repository reads from os.environ is a setting or in
    OTHER_VARIABLES (and nothing else is there): those are never warned about."""
    import re

    from auditstream.settings import OTHER_VARIABLES, setting_variables

    root = Path(__file__).resolve().parents[2]
    read = re.compile(r"""(?:environ(?:\.get\(|\[)|getenv\()\s*["'](AUDITSTREAM_[A-Z0-9_]+)["']""")
    found = set()
    for path in root.rglob("*.py"):
        if ".venv" in path.parts or "site-packages" in path.parts:
            continue
        found.update(read.findall(path.read_text(errors="replace")))
    assert found - set(setting_variables()) == set(OTHER_VARIABLES)
