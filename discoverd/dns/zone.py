"""The zone: what every cluster publishes, and the answer to any question about it. Pure.

`Zone` holds one immutable `Domain` per cluster domain (`<label>.<zone>`, and `<name>.<zone>`
for named clusters; the label is `directory.rules.cluster_label`, never the token); a registry
change replaces the domains of the changed cluster whole.
`lookup` follows RFC 1034/2308/8020: an answer, or NODATA (the name or an empty non-terminal
exists), or NXDOMAIN, always authoritative, negative answers with the SOA; REFUSED outside
the zone (never an open resolver).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dnslib import AAAA, NS, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel

from discoverd.dns import names
from discoverd.dns.names import Name

POSITIVE_TTL = 30
NEGATIVE_TTL = 5
SRV_PRIORITY = 0
SRV_WEIGHT = 100


@dataclass(frozen=True, slots=True)
class MemberEndpoints:
    """One member as DNS sees it: its name and the URLs its peers and clients use."""

    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Published:
    """What one cluster publishes, under its label (and its name)."""

    label: str
    name: str | None
    members: tuple[MemberEndpoints, ...]


@dataclass(frozen=True, slots=True)
class Result:
    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()


@dataclass(frozen=True)
class Domain:
    """Every record of one cluster domain, and every name that exists in it."""

    records: dict[Name, dict[int, tuple[RR, ...]]] = field(default_factory=dict)
    existing: frozenset[Name] = frozenset()


class Zone:
    """The zone's data. Mutated only through `set_cluster`, one cluster at a time."""

    def __init__(self, origin: str, ns_addresses: Iterable[str] = ()) -> None:
        self.origin: Name = names.parse(origin)
        self.serial = 1
        self._ns_name: Name = (b"ns", *self.origin)
        self._ns_glue = tuple(_address_rr(self._ns_name, ip) for ip in ns_addresses)
        self._domains: dict[bytes, Domain] = {}
        self._labels_of: dict[str, tuple[bytes, ...]] = {}

    def set_cluster(self, token: str, published: Published | None, serial: int) -> None:
        """Publish `published` for `token` (None: the token is gone)."""
        for label in self._labels_of.pop(token, ()):
            self._domains.pop(label, None)
        if published is not None:
            labels = [published.label.encode()]
            if published.name:
                labels.append(published.name.encode())
            for label in labels:
                self._domains[label] = build_domain((label, *self.origin), published)
            self._labels_of[token] = tuple(labels)
        self.serial = max(self.serial + 1, serial & 0xFFFFFFFF)

    def soa(self) -> RR:
        times = (self.serial, 3600, 600, 86400, NEGATIVE_TTL)
        rdata = SOA(DNSLabel(self._ns_name), DNSLabel((b"hostmaster", *self.origin)), times)
        return RR(DNSLabel(self.origin), QTYPE.SOA, ttl=NEGATIVE_TTL, rdata=rdata)

    def lookup(self, qname: Name, qtype: int) -> Result:
        depth = len(self.origin)
        if len(qname) < depth or qname[len(qname) - depth :] != self.origin:
            return Result(RCODE.REFUSED)
        relative = qname[: len(qname) - depth]
        if not relative:
            return self._apex(qtype)
        if relative == (b"ns",):
            return self._answer(qtype, {QTYPE.A: self._a(4), QTYPE.AAAA: self._a(6)}, ())
        domain = self._domains.get(relative[-1])
        rrsets = domain.records.get(qname) if domain is not None else None
        if domain is None or rrsets is None:
            exists = domain is not None and qname in domain.existing  # an empty non-terminal
            rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
            return Result(rcode, authority=(self.soa(),))
        return self._answer(qtype, rrsets, _glue_for(domain, rrsets, qtype))

    def _apex(self, qtype: int) -> Result:
        ns = RR(
            DNSLabel(self.origin), QTYPE.NS, ttl=POSITIVE_TTL, rdata=NS(DNSLabel(self._ns_name))
        )
        rrsets = {QTYPE.SOA: (self.soa(),), QTYPE.NS: (ns,)}
        glue = self._ns_glue if qtype in (QTYPE.NS, QTYPE.ANY) else ()
        return self._answer(qtype, rrsets, glue)

    def _a(self, version: int) -> tuple[RR, ...]:
        wanted = QTYPE.A if version == 4 else QTYPE.AAAA
        return tuple(rr for rr in self._ns_glue if rr.rtype == wanted)

    def _answer(self, qtype: int, rrsets: dict[int, tuple[RR, ...]], glue: Iterable[RR]) -> Result:
        if qtype == QTYPE.ANY:
            answer = tuple(rr for rrset in rrsets.values() for rr in rrset)
        else:
            answer = rrsets.get(qtype, ())
        if not answer:
            return Result(RCODE.NOERROR, authority=(self.soa(),))
        return Result(RCODE.NOERROR, answer=answer, additional=tuple(glue))


def build_domain(base: Name, published: Published) -> Domain:
    """All records of one cluster under `base` (`<label>.<zone>` or `<name>.<zone>`)."""
    records: dict[Name, dict[int, list[RR]]] = {}

    def add(owner: Name, rr: RR) -> None:
        rrset = records.setdefault(owner, {}).setdefault(rr.rtype, [])
        if all(existing.rdata != rr.rdata for existing in rrset):
            rrset.append(rr)

    for member in published.members:
        if not names.is_host_label(member.name):
            continue  # not a hostname label: it cannot be an SRV target
        own_target: Name = (member.name.lower().encode(), *base)
        for service, urls in (("server", member.peer_urls), ("client", member.client_urls)):
            for url in urls:
                endpoint = _endpoint(url)
                if endpoint is None:
                    continue
                tls, host, port = endpoint
                target = own_target
                try:
                    ip = ipaddress.ip_address(host)
                except ValueError:
                    target = names.parse(host)  # a URL naming a host keeps that host
                else:
                    add(own_target, _address_rr(own_target, str(ip)))
                suffixes = ("", published.name) if published.name else ("",)
                for suffix in suffixes:
                    owner = (names.srv_label(service, tls, suffix or ""), names.TCP, *base)
                    rdata = SRV(SRV_PRIORITY, SRV_WEIGHT, port, DNSLabel(target))
                    add(owner, RR(DNSLabel(owner), QTYPE.SRV, ttl=POSITIVE_TTL, rdata=rdata))
    existing = {base}
    for owner in records:
        for cut in range(len(owner) - len(base) + 1):
            existing.add(owner[cut:])
    frozen = {
        owner: {t: tuple(rrs) for t, rrs in rrsets.items()} for owner, rrsets in records.items()
    }
    return Domain(frozen, frozenset(existing))


def _glue_for(domain: Domain, rrsets: dict[int, tuple[RR, ...]], qtype: int) -> tuple[RR, ...]:
    if qtype not in (QTYPE.SRV, QTYPE.ANY):
        return ()
    glue: list[RR] = []
    for rr in rrsets.get(QTYPE.SRV, ()):
        target = names.lower(tuple(rr.rdata.target.label))
        for address_type in (QTYPE.A, QTYPE.AAAA):
            for address in domain.records.get(target, {}).get(address_type, ()):
                if address not in glue:
                    glue.append(address)
    return tuple(glue)


def _endpoint(url: str) -> tuple[bool, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        return None
    return parts.scheme == "https", parts.hostname, port


def _address_rr(owner: Name, ip: str) -> RR:
    address = ipaddress.ip_address(ip)
    rdata = A(str(address)) if address.version == 4 else AAAA(str(address))
    qtype = QTYPE.A if address.version == 4 else QTYPE.AAAA
    return RR(DNSLabel(owner), qtype, ttl=POSITIVE_TTL, rdata=rdata)
