"""Which names a certificate of a cluster may carry. Pure: CSR contents in, a verdict out.

A certificate names one member and nothing else. For member `infra0`:
  DNS: `infra0.<domain>` for each cluster domain (`<label>.<zone>`, `<name>.<zone>`) and each
       suffix given at creation (`&dns=`), the cluster domains and suffixes themselves (etcdctl
       `--discovery-srv D` checks the server against D, and so does etcd for peers when no
       trusted CA file is given), and `localhost`. Never another member's name, never a
       wildcard.
  IP:  loopback, the private ranges (RFC 1918, RFC 6598 shared space, IPv6 ULA) and the CIDRs
       given at creation (`&cidr=`), except an address another member's certificate holds.
  CN:  the member name (peer, server) or the etcd user (client), lower-cased, so `INFRA0` is
       `infra0`; never `root`, etcd's superuser, except for a client of a cluster created
       with `/new?root=1`.
A refusal names the SAN (or name) and the rule it broke.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from discoverd.certs.pki import Profile, Sans
from discoverd.errors import Conflict, Forbidden, Invalid

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
ALWAYS_DNS = ("localhost",)
ALWAYS_IPS: tuple[IPAddress, ...] = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
ROOT = "root"  # etcd's superuser: a client certificate with this CN can do anything
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*"
)
_USER = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_MEMBER = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class SanPolicy:
    domains: tuple[str, ...]
    dns_suffixes: tuple[str, ...] = ()
    cidrs: tuple[IPNetwork, ...] = ()

    def names_of(self, member: str) -> tuple[str, ...]:
        """Every DNS name a certificate of `member` may carry."""
        bases = (*self.domains, *self.dns_suffixes)
        return (*ALWAYS_DNS, *bases, *(f"{member}.{base}" for base in bases))

    def check(self, sans: Sans, member: str, taken: Mapping[IPAddress, str] | None = None) -> None:
        """Refuse a SAN that is not `member`'s own; `taken`: addresses other members hold."""
        allowed = self.names_of(member)
        for name in sans.dns:
            self._check_dns(name, member, allowed)
        for ip in sans.ips:
            if not any(ip in net for net in (*LOOPBACK, *PRIVATE, *self.cidrs)):
                networks = ", ".join(str(net) for net in self.cidrs) or "none given at creation"
                raise Invalid(
                    f"IP SAN {ip} is not allowed: only loopback, private ranges and the "
                    f"cluster's CIDRs ({networks})",
                    cause=str(ip),
                )
            holder = (taken or {}).get(ip)
            if holder not in (None, member) and not any(ip in net for net in LOOPBACK):
                raise Conflict(
                    f"IP SAN {ip} is not allowed: a certificate of member {holder} names it",
                    cause=str(ip),
                )

    @staticmethod
    def _check_dns(name: str, member: str, allowed: tuple[str, ...]) -> None:
        lowered = name.lower().rstrip(".")
        if "*" in lowered:
            raise Invalid(f"DNS SAN {name!r} is a wildcard: wildcards are never issued", cause=name)
        if not _DNS_NAME.fullmatch(lowered):
            raise Invalid(f"DNS SAN {name!r} is not a valid DNS name", cause=name[:64])
        if lowered not in allowed:
            raise Invalid(
                f"DNS SAN {name!r} is not allowed: a certificate of {member} names only "
                f"{', '.join(allowed)}",
                cause=name[:64],
            )


def leaf_sans(
    profile: Profile,
    requested: Sans,
    policy: SanPolicy,
    member: str,
    taken: Mapping[IPAddress, str] | None = None,
) -> Sans:
    """The SANs of a new leaf: the checked CSR SANs, lower-cased, plus loopback for peer and
    server."""
    if profile is Profile.CLIENT:
        if requested.dns or requested.ips:
            raise Invalid("a client certificate carries no SANs: its identity is the CN")
        return Sans()
    policy.check(requested, member, taken)
    dns = tuple(dict.fromkeys((*(n.lower().rstrip(".") for n in requested.dns), *ALWAYS_DNS)))
    ips = tuple(dict.fromkeys((*requested.ips, *ALWAYS_IPS)))
    return Sans(dns, ips)


def relabel(sans: Sans, token: str, label: str) -> Sans:
    """The SANs of a certificate issued before clusters had labels (`infra0.<token>.<zone>`),
    with the cluster's label in place of the token: a renewal never copies the secret."""
    dns = (".".join(label if part.lower() == token else part for part in name.split("."))
           for name in sans.dns)  # fmt: skip
    return Sans(tuple(dict.fromkeys(dns)), sans.ips)


def subject_name(profile: Profile, name: str, *, allow_root: bool = False) -> str:
    """The enrolled name (the certificate's CN), lower-cased: a member name (a DNS label) for
    peers and servers, the etcd user for clients. `root` only for a client, and only where
    the cluster was created to allow it."""
    lowered = name.lower()
    if profile is Profile.CLIENT:
        if not _USER.fullmatch(lowered):
            raise Invalid("client name (the etcd user) must be 1-64 of a-z 0-9 . _ @ -")
    elif not _MEMBER.fullmatch(lowered):
        raise Invalid(
            "member name must be a DNS label: letters, digits, '-' or '_'", cause=name[:64]
        )
    if lowered == ROOT and not (profile is Profile.CLIENT and allow_root):
        where = "a client certificate of a cluster created with /new?root=1"
        raise Forbidden(
            f"the name root is etcd's superuser: only {where} may carry it", cause=name[:64]
        )
    return lowered
