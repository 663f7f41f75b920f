"""Operator actions on a live cluster's CA, straight against etcd (as `discoverd cert revoke`).

Whoever can write discoverd's keys in etcd already controls every cluster, so etcd access is
the authorisation. Revoking marks the inventory record, blocks renewal, and frees the name so
that the node can be enrolled again (re-issue). Each replica's CRL lists it as soon as that
replica's watch delivers the change (milliseconds; poll crl.pem if a script must be sure).
"""

from __future__ import annotations

import time

from discoverd.errors import Invalid, NotFound
from discoverd.models import CertRecord
from discoverd.store import keys
from discoverd.store.certificates import CertificateStore
from discoverd.store.gateway import EtcdGateway


def _matches(record: CertRecord, serial: str | None, name: str | None, profile: str | None) -> bool:
    if record.revoked_at is not None:
        return False
    if serial is not None and int(record.serial, 16) != int(serial, 16):
        return False
    return (name is None or record.name == name) and (profile is None or record.profile == profile)


async def revoke(
    gateway: EtcdGateway,
    token: str,
    serial: str | None = None,
    name: str | None = None,
    profile: str | None = None,
) -> list[CertRecord]:
    """Revoke the certificate with `serial`, or every live one of `name` (and `profile`)."""
    if not serial and not name:
        raise Invalid("say which certificate: --serial, or --name [--profile]")
    if serial is not None:
        serial = serial.replace(":", "").strip()  # openssl prints serials as ab:cd:...
        try:
            int(serial, 16)
        except ValueError:
            raise Invalid(f"serial {serial!r} is not hexadecimal") from None
    _, config = await gateway.get(keys.cluster_config(token))
    if config is None:
        raise NotFound("no such cluster (unknown or expired token)")
    _, kvs = await gateway.range_prefix(keys.certificates(token))
    records = [CertRecord.model_validate_json(kv.value) for kv in kvs]
    chosen = [record for record in records if _matches(record, serial, name, profile)]
    if not chosen:
        raise NotFound("no live certificate of this cluster matches")
    store = CertificateStore(gateway)
    revoked = []
    for record in chosen:
        marked = record.model_copy(update={"revoked_at": time.time()})
        await store.revoke(token, marked, config.lease)
        revoked.append(marked)
    return revoked
