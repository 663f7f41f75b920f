"""The zone: what every cluster publishes, and the answer to any question about it. Pure.

`Zone` holds one `Domain` per cluster, answering under `<label>.<zone>` (the label is
`directory.rules.cluster_label`, never the token) and, for a named cluster, `<name>.<zone>`
too. A domain keeps its data relative to that base: SRV targets by (service, tls), addresses by
member label. Wire-form `Record`s are made on the first lookup of
a name and kept until the cluster changes (a change replaces its `Domain` whole).

Cost, since all of this runs on the event loop: a change to one cluster costs O(its records)
and touches no other cluster. Members whose endpoints did not change keep their parsed records
(only a new or changed member's URLs are parsed), nothing is compared pairwise, and a cluster
publishes at most `MAX_URLS` peer and `MAX_URLS` client URLs per member and `MAX_RECORDS`
records in all (members past the cap, in name order, are left out of DNS and counted in
`Domain.omitted`). `Zone.operations` counts that work, so tests can hold it to these bounds.

`lookup` follows RFC 1034/2308/8020: an answer, or NODATA (the name or an empty non-terminal
exists), or NXDOMAIN, always authoritative, negative answers with the SOA; REFUSED outside
the zone (never an open resolver). A `Result` names the cluster domain its answer depends on,
so that a cache can keep other clusters' answers across a change.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import QTYPE, RCODE

from discoverd.dns import names
from discoverd.dns.names import Name

POSITIVE_TTL = 30
NEGATIVE_TTL = 5
SRV_PRIORITY = 0
SRV_WEIGHT = 100
MAX_URLS = 4  # per member, of peer URLs and of client URLs: etcd advertises one or two
MAX_RECORDS = 1024  # per cluster: 198 dual-stack members (size 99) need under 800

_URL = re.compile(r"(?i)(https?)://(?:\[([0-9a-f:.]+)\]|([a-z0-9._-]+)):([0-9]{1,5})/?")
_SRV_FIXED = struct.Struct("!HHH")
_SOA_TIMES = struct.Struct("!5I")


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
class Record:
    """One resource record of class IN, its RDATA in wire form. `target` is the name that
    ends the RDATA (SRV, NS), written out uncompressed (RFC 2782)."""

    owner: Name
    rtype: int
    ttl: int
    rdata: bytes
    target: Name | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """An answer. `domain` is the cluster domain label it was read from: it stays true until
    that cluster changes. None: it may change with any change to the zone (the SOA serial)."""

    rcode: int
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    domain: bytes | None = None


Service = tuple[str, bool]  # ("server" | "client", tls)
SrvKey = tuple[int, Name, bool]  # port, target, whether the target is the member's own name


@dataclass(frozen=True, slots=True)
class MemberRecords:
    """What one member contributes, relative to its cluster's domain."""

    label: bytes
    srv: tuple[tuple[Service, SrvKey], ...]
    addresses: tuple[tuple[int, bytes], ...]  # (A or AAAA, packed address)

    @property
    def size(self) -> int:
        return len(self.srv) + len(self.addresses)


def member_records(member: MemberEndpoints) -> MemberRecords | None:
    """A member's SRV keys and addresses; None if its name cannot be an SRV target."""
    if not names.is_host_label(member.name):
        return None
    label = member.name.lower().encode()
    srv: dict[tuple[Service, SrvKey], None] = {}
    addresses: dict[tuple[int, bytes], None] = {}
    for service, urls in (("server", member.peer_urls), ("client", member.client_urls)):
        for url in urls[:MAX_URLS]:
            endpoint = _endpoint(url)
            if endpoint is None:
                continue
            tls, host, port = endpoint
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                target = _host_name(host)  # a URL naming a host keeps that host
                if target is None:
                    continue
                srv[(service, tls), (port, target, False)] = None
            else:
                rtype = QTYPE.A if ip.version == 4 else QTYPE.AAAA
                addresses[rtype, ip.packed] = None
                srv[(service, tls), (port, (label,), True)] = None
    return MemberRecords(label, tuple(srv), tuple(addresses))


class Domain:
    """One cluster's records, relative to its base (`<label>.<zone>` or `<name>.<zone>`)."""

    def __init__(self, name: str | None, members: Iterable[MemberRecords]) -> None:
        self.srv: dict[Service, dict[SrvKey, None]] = {}
        self.addresses: dict[bytes, dict[tuple[int, bytes], None]] = {}
        self.omitted = 0
        self.operations = 0
        total = 0
        for member in members:
            if total + member.size > MAX_RECORDS:
                self.omitted += 1
                continue
            total += member.size
            self.operations += member.size
            for service, key in member.srv:
                self.srv.setdefault(service, {})[key] = None
            for address in member.addresses:
                self.addresses.setdefault(member.label, {})[address] = None
        self.records = total
        suffixes = ("", name.lower()) if name else ("",)
        self.services: dict[bytes, Service] = {
            names.srv_label(service, tls, suffix): (service, tls)
            for service, tls in self.srv
            for suffix in suffixes
        }
        self._rrsets: dict[tuple[bytes, Name], dict[int, tuple[Record, ...]]] = {}

    def rrsets(self, base: Name, relative: Name) -> dict[int, tuple[Record, ...]] | None:
        """The records at `relative` + `base` by type; {} for an empty non-terminal; None if
        the name does not exist."""
        memo_key = (base[0], relative)
        found = self._rrsets.get(memo_key)
        if found is None:
            found = self._build(base, relative)
            if found is None:
                return None
            self._rrsets[memo_key] = found
        return found

    def glue(self, base: Name, srv: tuple[Record, ...]) -> tuple[Record, ...]:
        """The addresses of the SRV targets that are members of this domain."""
        labels: dict[bytes, None] = {}
        for record in srv:
            target = record.target
            if target is not None and target[1:] == base and target[0] in self.addresses:
                labels[target[0]] = None
        glue: list[Record] = []
        for label in labels:
            for rrset in (self.rrsets(base, (label,)) or {}).values():
                glue.extend(rrset)
        return tuple(glue)

    def _build(self, base: Name, relative: Name) -> dict[int, tuple[Record, ...]] | None:
        if not relative:
            return {}  # the cluster's domain itself: it exists, with no records
        if len(relative) == 1:
            if relative[0] == names.TCP:
                return {} if self.srv else None
            return self._addresses(base, relative[0])
        if len(relative) == 2 and relative[1] == names.TCP:
            return self._srv(base, relative[0])
        return None

    def _addresses(self, base: Name, label: bytes) -> dict[int, tuple[Record, ...]] | None:
        addresses = self.addresses.get(label)
        if addresses is None:
            return None
        owner = (label, *base)
        by_type: dict[int, list[Record]] = {}
        for rtype, packed in addresses:
            by_type.setdefault(rtype, []).append(Record(owner, rtype, POSITIVE_TTL, packed))
        return {rtype: tuple(records) for rtype, records in by_type.items()}

    def _srv(self, base: Name, label: bytes) -> dict[int, tuple[Record, ...]] | None:
        service = self.services.get(label)
        if service is None:
            return None
        owner = (label, names.TCP, *base)
        records = []
        for port, target, own in self.srv[service]:
            full = (*target, *base) if own else target
            rdata = _SRV_FIXED.pack(SRV_PRIORITY, SRV_WEIGHT, port) + names.wire(full)
            records.append(Record(owner, QTYPE.SRV, POSITIVE_TTL, rdata, full))
        return {QTYPE.SRV: tuple(records)}


@dataclass(slots=True)
class _Cluster:
    published: Published
    labels: tuple[bytes, ...]
    members: dict[MemberEndpoints, MemberRecords | None]
    domain: Domain


class Zone:
    """The zone's data. Mutated only through `set_cluster`, one cluster at a time."""

    def __init__(self, origin: str, ns_addresses: Iterable[str] = ()) -> None:
        self.origin: Name = names.parse(origin)
        self.serial = 1
        self.operations = 0  # record work done by set_cluster: URLs parsed, records placed
        self._ns_name: Name = (b"ns", *self.origin)
        self._ns_glue = tuple(_address_record(self._ns_name, ip) for ip in ns_addresses)
        self._domains: dict[bytes, Domain] = {}
        self._clusters: dict[str, _Cluster] = {}
        self._soa: Record | None = None

    def set_cluster(self, token: str, published: Published | None, serial: int) -> frozenset[bytes]:
        """Publish `published` for `token` (None: the token is gone). The domain labels whose
        answers changed (none if nothing did)."""
        old = self._clusters.pop(token, None)
        if (old.published if old is not None else None) == published:
            if old is not None:
                self._clusters[token] = old
            return frozenset()
        changed: set[bytes] = set()
        if old is not None:
            for label in old.labels:
                if self._domains.get(label) is old.domain:
                    del self._domains[label]
            changed.update(old.labels)
        if published is not None:
            known = old.members if old is not None else {}
            members: dict[MemberEndpoints, MemberRecords | None] = {}
            for member in published.members:
                if member in known:
                    members[member] = known[member]
                else:
                    members[member] = member_records(member)
                    self.operations += min(len(member.peer_urls), MAX_URLS)
                    self.operations += min(len(member.client_urls), MAX_URLS)
            domain = Domain(published.name, (m for m in members.values() if m is not None))
            self.operations += domain.operations
            labels = [published.label.encode()]
            if published.name:
                labels.append(published.name.lower().encode())
            for label in labels:
                self._domains[label] = domain
            self._clusters[token] = _Cluster(published, tuple(labels), members, domain)
            changed.update(labels)
        self.serial = max(self.serial + 1, serial & 0xFFFFFFFF)
        self._soa = None
        return frozenset(changed)

    def domain(self, token: str) -> Domain | None:
        cluster = self._clusters.get(token)
        return cluster.domain if cluster is not None else None

    def soa(self) -> Record:
        if self._soa is None:  # made again after every change: the serial moved
            times = _SOA_TIMES.pack(self.serial, 3600, 600, 86400, NEGATIVE_TTL)
            rdata = names.wire(self._ns_name) + names.wire((b"hostmaster", *self.origin)) + times
            self._soa = Record(self.origin, QTYPE.SOA, NEGATIVE_TTL, rdata)
        return self._soa

    def lookup(self, qname: Name, qtype: int) -> Result:
        depth = len(self.origin)
        if len(qname) < depth or qname[len(qname) - depth :] != self.origin:
            return Result(RCODE.REFUSED)
        relative = qname[: len(qname) - depth]
        if not relative:
            return self._apex(qtype)
        if relative == (b"ns",):
            return self._answer(qtype, {QTYPE.A: self._a(4), QTYPE.AAAA: self._a(6)}, ())
        label = relative[-1]
        domain = self._domains.get(label)
        if domain is None:
            return Result(RCODE.NXDOMAIN, authority=(self.soa(),))
        base = (label, *self.origin)
        rrsets = domain.rrsets(base, relative[:-1])
        if rrsets is None:
            return Result(RCODE.NXDOMAIN, authority=(self.soa(),))
        glue: tuple[Record, ...] = ()
        if qtype in (QTYPE.SRV, QTYPE.ANY) and QTYPE.SRV in rrsets:
            glue = domain.glue(base, rrsets[QTYPE.SRV])
        return self._answer(qtype, rrsets, glue, label)

    def _apex(self, qtype: int) -> Result:
        ns = Record(self.origin, QTYPE.NS, POSITIVE_TTL, names.wire(self._ns_name), self._ns_name)
        rrsets: dict[int, tuple[Record, ...]] = {QTYPE.SOA: (self.soa(),), QTYPE.NS: (ns,)}
        glue = self._ns_glue if qtype in (QTYPE.NS, QTYPE.ANY) else ()
        return self._answer(qtype, rrsets, glue)

    def _a(self, version: int) -> tuple[Record, ...]:
        wanted = QTYPE.A if version == 4 else QTYPE.AAAA
        return tuple(record for record in self._ns_glue if record.rtype == wanted)

    def _answer(
        self,
        qtype: int,
        rrsets: dict[int, tuple[Record, ...]],
        glue: tuple[Record, ...],
        domain: bytes | None = None,
    ) -> Result:
        if qtype == QTYPE.ANY:
            answer = tuple(record for rrset in rrsets.values() for record in rrset)
        else:
            answer = rrsets.get(qtype, ())
        if not answer:  # NODATA carries the SOA, whose serial moves with every change
            return Result(RCODE.NOERROR, authority=(self.soa(),))
        return Result(RCODE.NOERROR, answer=answer, additional=glue, domain=domain)


def _endpoint(url: str) -> tuple[bool, str, int] | None:
    """(tls, host, port) of `scheme://host:port[/]`; None for anything else."""
    match = _URL.fullmatch(url)
    if match is None:
        return None
    scheme, ipv6, host, port = match.groups()
    if int(port) > 65535:
        return None
    return scheme.lower() == "https", (ipv6 or host).lower(), int(port)


def _host_name(host: str) -> Name | None:
    """A host name that can be written in DNS, as labels; None if it cannot."""
    if not host.isascii() or len(host) > 253:
        return None
    labels = names.parse(host)
    if not labels or not all(names.is_host_label(label.decode()) for label in labels):
        return None
    return labels


def _address_record(owner: Name, ip: str) -> Record:
    address = ipaddress.ip_address(ip)
    rtype = QTYPE.A if address.version == 4 else QTYPE.AAAA
    return Record(owner, rtype, POSITIVE_TTL, address.packed)
