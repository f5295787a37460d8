"""A throwaway PKI for TLS on one machine: a CA, a broker certificate it signed (for localhost
and 127.0.0.1), a client certificate for mutual TLS, a certificate for another host, and a
second CA nobody trusts. ``bench serve`` measures TLS with it and the tests prove what the
clients accept and refuse. Made with ``cryptography`` (installed with moto, in the serve extra);
keys are ECDSA P-256, valid for one day: never for production."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the broker's and the client's certificates
    server_cert: Path  # names localhost and 127.0.0.1
    server_key: Path
    wrong_host_cert: Path  # signed by the CA, but for kafka.invalid only
    wrong_host_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:  # the owner's alone, as ssh and OpenSSL expect of a private key
        fd = os.open(path.with_suffix(".key"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a key file left from an earlier run keeps its mode through O_CREAT
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return path


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key, now = _key(), dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
          names: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key, now = _key(), dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("auditstream test CA")
    other, _ = _ca("a CA nobody trusts")
    server = _leaf(ca, ca_key, "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                   ExtendedKeyUsageOID.SERVER_AUTH)
    wrong = _leaf(ca, ca_key, "kafka.invalid", [x509.DNSName("kafka.invalid")], ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf(ca, ca_key, "auditstream-client", [x509.DNSName("auditstream-client")],
                   ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write(directory / "ca.pem", ca), other_ca=_write(directory / "other-ca.pem", other),
        server_cert=_write(directory / "server.pem", *server), server_key=directory / "server.key",
        wrong_host_cert=_write(directory / "wrong-host.pem", *wrong), wrong_host_key=directory / "wrong-host.key",
        client_cert=_write(directory / "client.pem", *client), client_key=directory / "client.key",
    )
