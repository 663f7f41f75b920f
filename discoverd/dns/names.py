"""DNS names of the zone, as tuples of lowercase byte labels (the order they have on the wire).

For a zone `etcd.internal` and a cluster with label L (`c-` and 16 hex, a hash of the token:
`directory.rules.cluster_label`; the token itself is never published) and the optional name
`prod`:

    L.etcd.internal                           the cluster domain (`--discovery-srv L.etcd.internal`)
    prod.etcd.internal                        the same cluster under its name
    _etcd-server-ssl._tcp.L.etcd.internal     SRV, one per https peer URL
    _etcd-server._tcp.L.etcd.internal         SRV, one per http peer URL
    _etcd-client-ssl._tcp.L.etcd.internal     SRV, one per https client URL
    _etcd-client._tcp.L.etcd.internal         SRV, one per http client URL
    _etcd-server-ssl-prod._tcp.prod.etcd.internal   the --discovery-srv-name variants (named only)
    infra0.L.etcd.internal                    A/AAAA of member infra0 (the SRV target)

Names are compared case-insensitively (ASCII only, RFC 4343), so every label here is lowercase.
"""

from __future__ import annotations

import re

Name = tuple[bytes, ...]

# A label that is a usable hostname label: what etcd's Go resolver accepts as an SRV target.
_HOST_LABEL = re.compile(rb"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")


def parse(text: str) -> Name:
    """`Etcd.Internal.` -> (b'etcd', b'internal')"""
    stripped = text.strip().rstrip(".")
    if not stripped:
        return ()
    return tuple(label.encode("ascii").lower() for label in stripped.split("."))


def text(name: Name) -> str:
    return ".".join(label.decode("ascii", "replace") for label in name) + "."


def lower(labels: Name) -> Name:
    return tuple(label.lower() for label in labels)


def is_host_label(label: str) -> bool:
    return bool(_HOST_LABEL.fullmatch(label.lower().encode("ascii", "replace")))


def valid_zone(zone: str) -> bool:
    labels = zone.strip().rstrip(".").split(".")
    return bool(labels) and all(_HOST_LABEL.fullmatch(label.lower().encode()) for label in labels)


def srv_label(service: str, tls: bool, suffix: str = "") -> bytes:
    """`_etcd-server-ssl-prod` for service 'server', tls, suffix 'prod'."""
    label = f"_etcd-{service}" + ("-ssl" if tls else "") + (f"-{suffix}" if suffix else "")
    return label.encode()


TCP = b"_tcp"


def wire(name: Name) -> bytes:
    """The uncompressed wire form of `name` (length-prefixed labels, then the root)."""
    return b"".join(bytes((len(label),)) + label for label in name) + b"\x00"
