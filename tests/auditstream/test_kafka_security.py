"""The security settings: validated with messages that say what to set, translated the same
way for both client libraries, and never shown with their secrets. The real connections are
tested in tests/stack/test_broker_security.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from auditstream.errors import BrokerUnavailable, ConfigError
from auditstream.kafka.security import kafka_python_config, librdkafka_config
from auditstream.settings import Settings


def _pem(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return str(path)


def test_plaintext_is_the_default_and_adds_nothing_else():
    assert kafka_python_config(Settings()) == {"security_protocol": "PLAINTEXT"}
    assert librdkafka_config(Settings()) == {"security.protocol": "plaintext"}


def test_sasl_ssl_is_translated_alike_for_both_libraries(tmp_path):
    ca, cert, key = _pem(tmp_path, "ca.pem"), _pem(tmp_path, "c.pem"), _pem(tmp_path, "c.key")
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=ca, kafka_ssl_certfile=cert,
                        kafka_ssl_keyfile=key, kafka_ssl_key_password="kp", kafka_ssl_check_hostname=False,
                        kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="u", kafka_sasl_password="pw")
    assert kafka_python_config(settings) == {
        "security_protocol": "SASL_SSL", "ssl_check_hostname": False, "ssl_cafile": ca, "ssl_certfile": cert,
        "ssl_keyfile": key, "ssl_password": "kp", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "u",
        "sasl_plain_password": "pw"}
    assert librdkafka_config(settings) == {
        "security.protocol": "sasl_ssl", "ssl.endpoint.identification.algorithm": "none", "ssl.ca.location": ca,
        "ssl.certificate.location": cert, "ssl.key.location": key, "ssl.key.password": "kp",
        "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "u", "sasl.password": "pw"}


def test_sasl_without_tls_sends_no_tls_settings():
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="pw")
    assert not any(k.startswith("ssl") for k in kafka_python_config(settings))
    assert not any(k.startswith("ssl") for k in librdkafka_config(settings))


@pytest.mark.parametrize("protocol, setting", [
    ("PLAINTEXT", "kafka_ssl_cafile"), ("SASL_PLAINTEXT", "kafka_ssl_cafile"), ("PLAINTEXT", "kafka_ssl_key_password"),
    ("PLAINTEXT", "kafka_sasl_username"), ("SSL", "kafka_sasl_password"),
])  # fmt: skip
def test_a_tls_or_sasl_setting_the_protocol_does_not_use_is_refused(protocol: str, setting: str) -> None:
    """Review 2026-12-04: a CA file or SASL credentials set beside PLAINTEXT were silently unused:
    the operator meant to encrypt or authenticate, and the clients connected in plaintext."""
    with pytest.raises(ConfigError, match=rf"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL=.*AUDITSTREAM_{setting.upper()}"):
        credentials = {"kafka_sasl_username": "u", "kafka_sasl_password": "pw"} if protocol.startswith("SASL_") else {}
        Settings(kafka_security_protocol=protocol, **{**credentials, setting: "x"})


def test_sasl_plain_over_plaintext_is_one_warning_with_either_client(caplog) -> None:
    from auditstream.kafka.security import check_broker

    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                        kafka_sasl_username="u", kafka_sasl_password="hunter2")
    with caplog.at_level(logging.WARNING, logger="auditstream.kafka.security"), pytest.raises(BrokerUnavailable):
        check_broker(settings, "127.0.0.1:1", timeout_s=1.0)  # nothing listens on port 1
    assert "SASL PLAIN over SASL_PLAINTEXT sends the password to 127.0.0.1:1 in clear text" in caplog.text
    assert "hunter2" not in caplog.text


def test_kafka_pythons_admin_client_never_logs_its_configuration(caplog) -> None:
    """Review 2026-12-04: KafkaAdminClient logs its whole configuration at DEBUG, SASL password
    included, and DEBUG is what someone chasing a SASL failure turns on."""
    from auditstream.kafka.interface import quiet_client_logs

    quiet_client_logs()
    with caplog.at_level(logging.DEBUG, logger="kafka"):
        logging.getLogger("kafka.admin.client").debug("Starting KafkaAdminClient with configuration: %s",
                                                      {"sasl_plain_password": "hunter2"})
        logging.getLogger("kafka.admin.client").debug("an ordinary line")
    assert "hunter2" not in caplog.text and "an ordinary line" in caplog.text


@pytest.mark.parametrize("env, variable", [
    ({"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "AUDITSTREAM_KAFKA_SECURITY_PROTOCOL"),
    ({"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "AUDITSTREAM_KAFKA_SASL_PASSWORD": "pw"},
     "AUDITSTREAM_KAFKA_SASL_USERNAME"),
    ({"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "AUDITSTREAM_KAFKA_SASL_USERNAME": "u"},
     "AUDITSTREAM_KAFKA_SASL_PASSWORD"),
    ({"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "AUDITSTREAM_KAFKA_SASL_USERNAME": "u",
      "AUDITSTREAM_KAFKA_SASL_PASSWORD": "pw", "AUDITSTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "AUDITSTREAM_KAFKA_SASL_MECHANISM"),
    ({"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "AUDITSTREAM_KAFKA_SSL_CAFILE": "/no/such/ca.pem"},
     "AUDITSTREAM_KAFKA_SSL_CAFILE"),
])
def test_a_bad_security_setting_names_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_a_client_certificate_needs_its_key(tmp_path):
    with pytest.raises(ConfigError, match="kafka_ssl_keyfile"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=_pem(tmp_path, "c.pem"))


def test_secrets_are_never_shown(caplog):
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="auditor",
                        kafka_sasl_password="hunter2", kafka_ssl_key_password="swordfish", qc_salt="pepper")
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %r / %s", settings, settings)
    for text in (repr(settings), str(settings), caplog.text):
        assert "hunter2" not in text and "swordfish" not in text and "pepper" not in text
        assert "kafka_sasl_username='auditor'" in text  # the user name is not a secret
    assert Settings.from_env(settings.to_env()) == settings  # a child process still gets them


@pytest.mark.parametrize("variable", ["AUDITSTREAM_KAFKA_SASL_PASSWORD", "AUDITSTREAM_KAFKA_SASL_USERNAME",
                                      "AUDITSTREAM_KAFKA_SSL_KEY_PASSWORD"])
@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_credential_with_a_line_break_from_its_file_is_refused_naming_the_variable(variable, ending, tmp_path):
    """kafka-security.yaml documented `--from-file=password=./kafka-password.txt`: the secret kept
    the file's newline and every SASL login failed as a wrong password."""
    env = {"AUDITSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "AUDITSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "AUDITSTREAM_KAFKA_SASL_USERNAME": "auditor", "AUDITSTREAM_KAFKA_SASL_PASSWORD": "hunter2",
           "AUDITSTREAM_KAFKA_SSL_CERTFILE": _pem(tmp_path, "c.pem"), "AUDITSTREAM_KAFKA_SSL_KEYFILE": _pem(tmp_path, "k.pem"),
           "AUDITSTREAM_KAFKA_SSL_KEY_PASSWORD": "swordfish"}
    Settings.from_env(env)  # as given: fine
    with pytest.raises(ConfigError, match=f"{variable}.*line break.*--from-literal") as refused:
        Settings.from_env({**env, variable: env[variable] + ending})
    assert "hunter2" not in str(refused.value) and "swordfish" not in str(refused.value)


def test_the_documented_secret_command_cannot_add_a_newline() -> None:
    text = (Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "k8s" / "kafka-security.yaml").read_text()
    commands = text.split("apiVersion:", 1)[0]
    assert "--from-file=password=./kafka-password.txt" not in commands
    assert "printf '%s'" in commands
