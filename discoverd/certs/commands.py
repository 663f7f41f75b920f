"""The operator's certificate commands: `ca init`, `cert issue|inspect|revoke`.

Each returns an exit status and prints one clear line on failure, never a traceback. `cert
revoke` writes to the backing etcd directly, with `serve`'s TLS and RBAC settings for it
(`--etcd-cacert`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password[-file]`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

from discoverd.certs import admin, lint, offline, pki
from discoverd.certs.pki import Profile
from discoverd.config import Settings
from discoverd.errors import DiscoverdError
from discoverd.store.access import EtcdAccess
from discoverd.store.gateway import EtcdGateway


def _fail(command: str, message: str) -> int:
    print(f"discoverd {command}: {message}", file=sys.stderr)
    return 1


def ca_init(directory: Path, common_name: str) -> int:
    try:
        path = offline.ca_init(directory, common_name)
    except DiscoverdError as exc:
        return _fail("ca init", exc.message)
    except OSError as exc:
        return _fail("ca init", f"{directory}: {exc.strerror}")
    cert = pki.load_cert(path.read_text())
    print(f"wrote {path} and {directory / 'ca-key.pem'} (0600); sha256 {pki.fingerprint(cert)}")
    return 0


def cert_issue(
    ca_dir: Path, csr_json: Path, *, profile: str, bare: str | None, out_dir: Path, ttl: float
) -> int:
    try:
        request = offline.load_csr_json(csr_json)
        name = bare or request.cn
        path = offline.cert_issue(
            ca_dir,
            request,
            profile=Profile(profile),
            out_dir=out_dir,
            bare=name,
            lifetime=dt.timedelta(seconds=ttl),
        )
    except DiscoverdError as exc:
        return _fail("cert issue", exc.message)
    except (OSError, ValueError) as exc:
        return _fail("cert issue", str(exc))
    print(f"wrote {path}, {out_dir / (name + '-key.pem')} (0600) and {out_dir / (name + '.csr')}")
    return 0


def cert_inspect(path: Path, ca_path: Path | None, profile: str | None) -> int:
    try:
        cert = pki.load_cert(path.read_text())
        ca = pki.load_cert(ca_path.read_text()) if ca_path else None
    except DiscoverdError as exc:
        return _fail("cert inspect", exc.message)
    except OSError as exc:
        return _fail("cert inspect", f"{exc.filename}: {exc.strerror}")
    for line in lint.describe(cert):
        print(line)
    findings = lint.inspect(cert, profile, ca)
    for finding in findings:
        print(f"{finding.severity}: {finding.text}")
    errors = sum(1 for finding in findings if finding.severity == "error")
    print(
        "verdict:   "
        + (
            "fit for etcd"
            if not findings
            else f"{errors} error(s), {len(findings) - errors} warning(s)"
        )
    )
    return 1 if errors else 0


def cert_revoke(
    endpoints: tuple[str, ...],
    settings: Settings,
    token: str,
    *,
    serial: str | None,
    name: str | None,
    profile: str | None,
) -> int:
    async def run() -> list[str]:
        gateway = EtcdGateway(endpoints, settings.etcd_timeout, access=etcd_access(settings))
        try:
            records = await admin.revoke(gateway, token, serial, name, profile)
        finally:
            gateway.close()
        return [f"revoked {r.serial} ({r.name}, {r.profile})" for r in records]

    try:
        lines = asyncio.run(run())
    except DiscoverdError as exc:
        return _fail("cert revoke", exc.message)
    for line in lines:
        print(line)
    return 0


def etcd_access(settings: Settings) -> EtcdAccess:
    """TLS and RBAC for the backing etcd, from the same flags (and variables) as `serve`."""
    return EtcdAccess(
        cacert=settings.etcd_cacert,
        cert=settings.etcd_cert,
        key=settings.etcd_key,
        user=settings.etcd_user,
        password=settings.etcd_secret,
    )
