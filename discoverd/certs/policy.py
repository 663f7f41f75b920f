"""Which names a certificate of a cluster may carry. Pure: CSR contents in, a verdict out.

Fixed when the token is created:
  DNS: the cluster domains (`<token>.<zone>`, `<name>.<zone>`) and any name under them,
       `localhost`, and names equal to or under the suffixes given at creation (`&dns=`);
  IP:  loopback, the private ranges (RFC 1918, RFC 6598 shared space, IPv6 ULA), and the
       CIDRs given at creation (`&cidr=`).
No wildcards, ever. A refusal names the SAN and the rule it broke.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from discoverd.certs.x509 import Profile, Sans
from discoverd.errors import Invalid

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
ALWAYS_DNS = ("localhost",)
ALWAYS_IPS: tuple[IPAddress, ...] = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*"
)
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class SanPolicy:
    domains: tuple[str, ...]
    dns_suffixes: tuple[str, ...] = ()
    cidrs: tuple[IPNetwork, ...] = ()

    def check(self, sans: Sans) -> None:
        for name in sans.dns:
            self._check_dns(name)
        for ip in sans.ips:
            if not any(ip in net for net in (*LOOPBACK, *PRIVATE, *self.cidrs)):
                allowed = ", ".join(str(net) for net in self.cidrs) or "none given at creation"
                raise Invalid(
                    f"IP SAN {ip} is not allowed: only loopback, private ranges and the "
                    f"cluster's CIDRs ({allowed})",
                    cause=str(ip),
                )

    def _check_dns(self, name: str) -> None:
        lowered = name.lower().rstrip(".")
        if "*" in lowered:
            raise Invalid(f"DNS SAN {name!r} is a wildcard: wildcards are never issued", cause=name)
        if not _DNS_NAME.fullmatch(lowered):
            raise Invalid(f"DNS SAN {name!r} is not a valid DNS name", cause=name[:64])
        if lowered in ALWAYS_DNS:
            return
        for base in (*self.domains, *self.dns_suffixes):
            if lowered == base or lowered.endswith("." + base):
                return
        allowed = ", ".join((*self.domains, *self.dns_suffixes))
        raise Invalid(
            f"DNS SAN {name!r} is not allowed: only localhost and names under {allowed}",
            cause=name,
        )


def leaf_sans(profile: Profile, requested: Sans, policy: SanPolicy) -> Sans:
    """The SANs of a new leaf: the checked CSR SANs, plus loopback for peer and server."""
    if profile is Profile.CLIENT:
        if requested.dns or requested.ips:
            raise Invalid("a client certificate carries no SANs: its identity is the CN")
        return Sans()
    policy.check(requested)
    dns = tuple(dict.fromkeys((*(n.lower().rstrip(".") for n in requested.dns), *ALWAYS_DNS)))
    ips = tuple(dict.fromkeys((*requested.ips, *ALWAYS_IPS)))
    return Sans(dns, ips)


def check_subject_name(profile: Profile, name: str) -> None:
    """Peers and servers are members (a DNS label); a client name is the etcd user."""
    if profile is Profile.CLIENT:
        if not _USER.fullmatch(name):
            raise Invalid("client name (the etcd user) must be 1-64 of A-Z a-z 0-9 . _ @ -")
        return
    if not re.fullmatch(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?", name.lower()):
        raise Invalid(
            "member name must be a DNS label: letters, digits, '-' or '_'", cause=name[:64]
        )
