"""``auditstream broker start`` refuses what it cannot use before it launches anything: an option
it would ignore (``--bucket`` without ``--durable``), a model name the registry refuses, an S3
endpoint that does not answer or for which Tansu would find no credentials. And when Tansu did
not start, the error says what its log says, not "start one with 'auditstream broker start'".

Nothing here launches Tansu (tests/stack/test_broker_lifecycle.py has those that do).
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from auditstream.cli import main
from auditstream.settings import Settings
from stack import broker as embedded

AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   "AWS_SKIP_SIGNATURE", "AWS_METADATA_ENDPOINT")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listening():
    """A port something listens on (as an S3 server would)."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def no_aws(monkeypatch):
    """No AWS credentials anywhere Tansu looks; the instance-metadata service a closed port."""
    for name in AWS_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


def _cli(state: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("AUDITSTREAM_STATE_DIR", str(state))
    monkeypatch.delenv("AUDITSTREAM_BOOTSTRAP_SERVERS", raising=False)
    code = main(["broker", "start", *args])
    return code, capsys.readouterr().err


# -- options it would ignore -----------------------------------------------------------------------


@pytest.mark.parametrize("args, refused", [
    (["--bucket", "foo"], "invalid --bucket='foo': expected used with --durable"),
    (["--bucket", "auditstream"], "invalid --bucket='auditstream': expected used with --durable"),
    (["--models", "bad name!"], "invalid --models='bad name!': expected comma-separated model names"),
    (["--models", "digits,Digits"], "invalid --models='Digits'"),
    (["--durable", "--bucket", "No_Such"], "invalid --bucket='No_Such': expected an S3 bucket name"),
    (["--durable", "--s3-endpoint", "127.0.0.1:9000"], "invalid --s3-endpoint='127.0.0.1:9000': expected an http://"),
])
def test_an_option_the_start_would_ignore_or_cannot_use_is_refused_in_one_line(tmp_path, monkeypatch, capsys, args,
                                                                               refused) -> None:
    """Review 2026-12-05: '--bucket foo' without --durable and "--models 'bad name!'" were
    accepted with exit 0 (while --s3-endpoint without --durable was refused)."""
    state = tmp_path / "state"
    code, err = _cli(state, monkeypatch, capsys, *args)
    assert code == 2 and err.startswith("auditstream: error: " + refused) and err.count("\n") == 1, err
    assert not (state / "broker.json").exists() and not (state / "broker.log").exists()


def test_the_api_refuses_a_bucket_without_durable_and_a_bad_model_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="--bucket"):
        embedded.BrokerOptions(bucket="foo")
    with pytest.raises(ValueError, match="--models"):
        embedded.start(Settings(state_dir=tmp_path / "state"), models=["ok", "../x"])
    assert not (tmp_path / "state").exists()


# -- an S3 endpoint Tansu cannot use -----------------------------------------------------------------


def test_an_s3_endpoint_that_does_not_answer_is_refused_at_once(tmp_path, monkeypatch, capsys) -> None:
    """Review 2026-12-05: '--durable --s3-endpoint http://127.0.0.1:1' waited 30 s and then said
    "Kafka broker at ... unavailable ... start one with 'auditstream broker start'"; the log said
    why (Tansu retried the endpoint, or asked 169.254.169.254 for credentials)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    state, port = tmp_path / "state", _closed_port()
    began = time.monotonic()
    code, err = _cli(state, monkeypatch, capsys, "--durable", "--s3-endpoint", f"http://127.0.0.1:{port}")
    assert time.monotonic() - began < 15, "not refused at once"
    assert code == 2 and err.count("\n") == 1, err
    assert f"did not start: the S3 endpoint http://127.0.0.1:{port} does not answer (ConnectionRefusedError" in err
    assert "start one with 'auditstream broker start'" not in err
    assert not (state / "broker.json").exists() and not (state / "broker.log").exists()  # nothing launched


def test_an_s3_endpoint_without_credentials_is_refused_naming_the_variables(tmp_path, monkeypatch, capsys, listening,
                                                                           no_aws) -> None:
    state = tmp_path / "state"
    code, err = _cli(state, monkeypatch, capsys, "--durable", "--s3-endpoint", f"http://127.0.0.1:{listening}")
    assert code == 2 and err.count("\n") == 1, err
    assert (f"did not start: no S3 credentials for http://127.0.0.1:{listening}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY") in err, err
    assert not (state / "broker.json").exists() and not (state / "broker.log").exists()


class _Imds(http.server.BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"token" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


def test_credentials_are_found_where_tansus_s3_client_looks(monkeypatch, no_aws) -> None:
    import os

    closed = {"AWS_METADATA_ENDPOINT": os.environ["AWS_METADATA_ENDPOINT"]}
    assert embedded._s3_credentials(dict(os.environ)) == ""
    assert embedded._s3_credentials({**closed, "AWS_ACCESS_KEY_ID": "a"}) == ""  # half a pair is none
    assert embedded._s3_credentials({**closed, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert embedded._s3_credentials({**closed, "AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn"})
    assert embedded._s3_credentials({**closed, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials"})
    server = http.server.HTTPServer(("127.0.0.1", 0), _Imds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # an instance-metadata service that hands out a token: credentials come from there
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # (urllib, like Tansu's client, honours a proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        imds = {"AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
        assert embedded._s3_credentials(imds) == "instance metadata"
    finally:
        server.shutdown()
        server.server_close()


# -- what Tansu's log says -----------------------------------------------------------------------------


IMDS_ERROR = ('\x1b[2m2026-12-05T10:02:25.516330Z\x1b[0m \x1b[31mERROR\x1b[0m \x1b[2mtansu_broker::broker\x1b[0m'
              '\x1b[2m:\x1b[0m \x1b[2m332:\x1b[0m \x1b[3merror\x1b[0m\x1b[2m=\x1b[0mStorage(ObjectStore(Generic { '
              'store: "S3", source: RetryError(RetryErrorImpl { method: PUT, uri: Some(http://169.254.169.254/latest/'
              'api/token), retries: 0, inner: Status { status: 403 } }) }))\n')


def test_the_error_shown_is_the_last_one_this_start_wrote(tmp_path) -> None:
    log = tmp_path / "broker.log"
    log.write_text("2026-12-04T09:00:00Z ERROR tansu_broker::broker: 12: an earlier run's error\n")
    offset = log.stat().st_size
    with open(log, "a") as f:
        f.write("tansu broker 0.6.0\nlistening on: tcp://127.0.0.1:1\n" + IMDS_ERROR + "\n")
    said = embedded._log_error(log, offset)
    assert said.startswith("Tansu found no S3 credentials and asked the cloud instance-metadata service for some: "
                           "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (its error: error=Storage(ObjectStore("), said
    assert "\x1b" not in said and "earlier run" not in said
    assert embedded._log_error(log) == said  # the last ERROR line wins
    log.write_text("x" * 10 + "\nERROR m: 1: " + "a" * 300 + "b" * 300 + "\n")
    short = embedded._log_error(log)
    assert len(short) < 420 and short.startswith("a" * 200) and short.endswith("b" * 200) and " ... " in short
    log.write_text("no error, only this\n")
    assert embedded._log_error(log) == "no error, only this"
    assert embedded._log_error(tmp_path / "none.log") == "no log"
