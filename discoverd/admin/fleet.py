"""The fleet as the admin API shows it: pure functions from clusters to JSON-ready data.

A cluster is named by its token's fingerprint (`discoverd.logs.fingerprint`), never by the
token: the listing is for operators, and the token is the cluster's bearer secret. Each entry
says how far the cluster got (size, members registered), whether its bootstrap window is open,
and what its CA and certificates look like (CA expiry, earliest certificate expiry).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from discoverd.errors import Invalid
from discoverd.logs import fingerprint
from discoverd.models import Cluster

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 10**9
MAX_SEARCH = 64
PARAMETERS = ("name", "fingerprint", "limit", "offset")
_HEX = re.compile(r"[0-9a-f]{1,8}")
_WHOLE = re.compile(r"\d{1,10}")
_CA_EXPIRY = "admin/ca-not-after"  # memo key: the CA certificate is parsed once per cluster


@dataclass(frozen=True, slots=True)
class FleetQuery:
    name: str | None = None  # substring of the cluster name, case-insensitive
    fingerprint: str | None = None  # prefix of the token fingerprint (as the logs show it)
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def parse_query(query: Mapping[str, str]) -> FleetQuery:
    """The query of `GET /api/v1/admin/clusters`; Invalid with the reason otherwise."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise Invalid(
            f"unknown parameter {unknown[0][:32]!r}: use {', '.join(PARAMETERS)}",
            cause=unknown[0][:32],
        )
    name = query.get("name")
    if name is not None and len(name) > MAX_SEARCH:
        raise Invalid(f"name search is at most {MAX_SEARCH} characters", cause="name")
    prefix = query.get("fingerprint")
    if prefix is not None and not _HEX.fullmatch(prefix.lower()):
        raise Invalid(
            "fingerprint is 1 to 8 hex characters (as the logs show it)", cause=prefix[:32]
        )
    return FleetQuery(
        name=name.lower() if name else None,
        fingerprint=prefix.lower() if prefix else None,
        limit=_whole(query.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_whole(query.get("offset"), "offset", 0, 0, MAX_OFFSET),
    )


def _whole(text: str | None, what: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not _WHOLE.fullmatch(text) or not low <= int(text) <= high:
        raise Invalid(f"{what} must be a whole number from {low} to {high}", cause=text[:32])
    return int(text)


def page(
    tokens: Iterable[str],
    lookup: Callable[[str], Cluster | None],
    query: FleetQuery,
    now: float,
) -> dict[str, Any]:
    """The clusters of `tokens` that match `query`, newest first, one page of them. Cost is
    linear in the fleet: run it off the event loop."""
    matches = [
        cluster
        for token in tokens
        if (cluster := lookup(token)) is not None and _matches(cluster, query)
    ]
    newest = heapq.nlargest(
        query.offset + query.limit, matches, key=lambda c: (c.created, c.token)
    )[query.offset :]
    return {
        "total": len(matches),
        "offset": query.offset,
        "limit": query.limit,
        "clusters": [summary(cluster, now) for cluster in newest],
    }


def _matches(cluster: Cluster, query: FleetQuery) -> bool:
    if query.name is not None:
        name = cluster.config.name
        if name is None or query.name not in name.lower():
            return False
    return query.fingerprint is None or fingerprint(cluster.token).startswith(query.fingerprint)


def summary(cluster: Cluster, now: float) -> dict[str, Any]:
    """One cluster of the listing. Never the token."""
    config = cluster.config
    until = config.bootstrap_until
    live = [c for c in cluster.certs if c.revoked_at is None and c.not_after > now]
    ca_expiry = ca_not_after(cluster)
    return {
        "fingerprint": fingerprint(cluster.token),
        "name": config.name,
        "size": config.size,
        "registered": len(cluster.member_names()),
        "bootstrap": {
            "created_at": _iso(config.created_at),
            "until": _iso(until),
            "open": until is None or now <= until,
        },
        "ca": {"present": cluster.ca is not None, "expires_at": _iso(ca_expiry)},
        "certificates": {
            "count": len(cluster.certs),
            "revoked": sum(1 for c in cluster.certs if c.revoked_at is not None),
            "expired": sum(1 for c in cluster.certs if c.revoked_at is None and c.not_after <= now),
            "earliest_expiry": _iso(min((c.not_after for c in live), default=None)),
        },
    }


def ca_not_after(cluster: Cluster) -> float | None:
    """When the cluster's CA certificate expires (unix time); None without a readable CA."""
    if cluster.ca is None:
        return None
    if _CA_EXPIRY not in cluster.memo:
        try:
            cert = x509.load_pem_x509_certificate(cluster.ca.certificate.encode())
            cluster.memo[_CA_EXPIRY] = cert.not_valid_after_utc.timestamp()
        except ValueError:
            cluster.memo[_CA_EXPIRY] = None
    expiry: float | None = cluster.memo[_CA_EXPIRY]
    return expiry


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat()
