"""`discoverd cert inspect`: a certificate checked against what etcd needs, in plain words.
Its facts are printed as openssl prints them (SANs: `DNS:a.example, IP Address:10.0.0.1`).

Each finding is an error (etcd will refuse or fail with it) or a warning (it works, but a
common setup breaks), and says why, citing the etcd failure it prevents.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from discoverd.certs import pki

SOON = dt.timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str  # "error" or "warning"
    text: str


def inspect(
    cert: cx509.Certificate, profile: str | None, ca: cx509.Certificate | None
) -> list[Finding]:
    findings: list[Finding] = []
    now = pki.now()
    if now < cert.not_valid_before_utc:
        findings.append(
            Finding("error", f"not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
        )
    if now > cert.not_valid_after_utc:
        findings.append(
            Finding("error", f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        )
    elif cert.not_valid_after_utc - now < SOON:
        findings.append(
            Finding("warning", f"expires soon: {cert.not_valid_after_utc:%Y-%m-%d} UTC")
        )
    if _is_ca(cert):
        findings.append(Finding("error", "this is a CA certificate (CA:TRUE), not a member's"))
        return findings + _chain(cert, ca)
    usages = _usages(cert)
    server, client = (
        ExtendedKeyUsageOID.SERVER_AUTH in usages,
        ExtendedKeyUsageOID.CLIENT_AUTH in usages,
    )
    wanted = profile or ("client" if client and not server else "peer")
    if wanted in ("peer", "server"):
        if not server:
            findings.append(Finding("error", "no serverAuth usage: etcd cannot listen with it"))
        if not client:
            findings.append(Finding(
                "error",
                "no clientAuth usage: etcd also dials with its peer and server certificates "
                "and the handshake fails with 'bad certificate' (etcd#9785, #6018)",
            ))  # fmt: skip
        findings += _sans(cert)
    elif not client:
        findings.append(Finding("error", "no clientAuth usage: it cannot be a client certificate"))
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        findings.append(Finding("error", f"RSA key of {public.key_size} bits: 2048 at least"))
    return findings + _chain(cert, ca)


def _sans(cert: cx509.Certificate) -> list[Finding]:
    try:
        ext = cert.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
    except cx509.ExtensionNotFound:
        return [Finding("error", "no SANs at all: since etcd 3.2 peers are checked against them")]
    ips = ext.get_values_for_type(cx509.IPAddress)
    names = ext.get_values_for_type(cx509.DNSName)
    findings = []
    if not ips:
        findings.append(Finding(
            "warning",
            "no IP SANs: clients and peers that connect by IP fail with 'certificate is valid "
            "for …, not <ip>' (etcd#19691); DNS-only SANs need working forward DNS (#9575)",
        ))  # fmt: skip
    if ipaddress.ip_address("127.0.0.1") not in ips and "localhost" not in names:
        findings.append(
            Finding(
                "warning", "no 127.0.0.1 or localhost SAN: local etcdctl and health checks fail"
            )
        )
    if any("*" in name for name in names):
        findings.append(
            Finding("warning", "wildcard DNS SAN: etcd 3.2+ peer checks reject them (etcd#8268)")
        )
    return findings


def _chain(cert: cx509.Certificate, ca: cx509.Certificate | None) -> list[Finding]:
    if ca is None:
        return []
    if cert.issuer != ca.subject:
        return [Finding("error", "not issued by this CA (the issuer name differs)")]
    if not pki.issued_by(cert, ca):
        return [
            Finding(
                "error",
                "the CA's signature does not verify: 'certificate signed by unknown authority'",
            )
        ]
    return []


def _is_ca(cert: cx509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(cx509.BasicConstraints).value.ca)
    except cx509.ExtensionNotFound:
        return False


def _usages(cert: cx509.Certificate) -> list[cx509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(cx509.ExtendedKeyUsage).value)
    except cx509.ExtensionNotFound:
        return []


def describe(cert: cx509.Certificate) -> list[str]:
    """The facts an operator wants first."""
    try:
        found = cert.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
        sans = [san_text(name) for name in found]
    except cx509.ExtensionNotFound:
        sans = []
    usages = [getattr(u, "_name", u.dotted_string) for u in _usages(cert)]
    return [
        f"subject:   {cert.subject.rfc4514_string()}",
        f"issuer:    {cert.issuer.rfc4514_string()}",
        f"serial:    {cert.serial_number:x}",
        f"valid:     {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
        f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"usages:    {', '.join(usages) or 'none'}",
        f"SANs:      {', '.join(sans) or 'none'}",
        f"sha256:    {pki.fingerprint(cert)}",
    ]


# openssl's label of each kind of name whose value prints as it is
_SAN_LABELS: dict[type[cx509.GeneralName], str] = {
    cx509.DNSName: "DNS",
    cx509.RFC822Name: "email",
    cx509.UniformResourceIdentifier: "URI",
}


def san_text(name: cx509.GeneralName) -> str:
    """One SAN as `openssl x509 -ext subjectAltName` prints it: `DNS:a.example`,
    `IP Address:10.0.0.1`, `IP Address:FE80:0:0:0:0:0:0:1`, `email:…`, `URI:…`."""
    label = _SAN_LABELS.get(type(name))
    if label is not None:
        return f"{label}:{name.value}"
    if isinstance(name, cx509.IPAddress):
        return f"IP Address:{_ip_text(name.value)}"
    if isinstance(name, cx509.RegisteredID):
        return f"Registered ID:{name.value.dotted_string}"
    if isinstance(name, cx509.DirectoryName):
        parts = (f"{a.rfc4514_attribute_name} = {a.value!s}" for a in name.value)
        return "DirName:" + ", ".join(parts)
    return "othername:<unsupported>"


def _ip_text(address: object) -> str:
    """openssl's form: IPv6 as eight uppercase groups, never shortened."""
    if isinstance(address, ipaddress.IPv6Address):
        packed = address.packed
        return ":".join(f"{packed[i] << 8 | packed[i + 1]:X}" for i in range(0, 16, 2))
    return str(address)
