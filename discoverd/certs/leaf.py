"""The enrollment hot path's leaf certificates: DER from a per-CA template, signed with the CA key.

`x509.issue` builds a leaf with cryptography's CertificateBuilder, which turns a dozen Python
objects into DER on every call; most of what it encodes is the same for every leaf of a CA
(issuer, signature algorithm, authority key identifier, basic constraints, key usages). A
`Template` encodes those once per CA; `Template.issue` encodes what differs (serial, validity,
CN, the subject's public key as the CSR carried it, its key identifier, SANs) and signs the
TBSCertificate with the CA's key, as the builder would: the TBS bytes are the builder's, byte
for byte (tests/certs/test_leaf.py compares them), and the signature is the CA key's ECDSA.
Only ECDSA CA keys (what discoverd makes) have a template; `template` returns None for others,
which go through `x509.issue`. No policy here: the caller passes checked names.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from discoverd.certs.x509 import BACKDATE, PrivateKey, Profile, Sans, now, random_serial

_ECDSA_SHA = {  # the signature algorithm OID of each hash an ECDSA CA signs with (x509._hash_for)
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
}
_UTC_TIME_END = 2050  # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, value: bytes) -> bytes:
    """One DER element."""
    return bytes((tag,)) + _length(len(value)) + value


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def integer(value: int) -> bytes:
    """A non-negative INTEGER."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _time(at: dt.datetime) -> bytes:
    """UTCTime or GeneralizedTime of `at` (UTC, whole seconds)."""
    rest = f"{at.month:02d}{at.day:02d}{at.hour:02d}{at.minute:02d}{at.second:02d}Z"
    if at.year < _UTC_TIME_END:
        return tlv(0x17, f"{at.year % 100:02d}{rest}".encode())
    return tlv(0x18, f"{at.year:04d}{rest}".encode())


def _extension(dotted: str, value: bytes, critical: bool = False) -> bytes:
    flag = b"\x01\x01\xff" if critical else b""
    return seq(oid(dotted), flag, tlv(0x04, value))


_SKI = oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string)
_SAN = oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string)
_CN = oid(NameOID.COMMON_NAME.dotted_string)


def _read(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at `at`."""
    tag, first = data[at], data[at + 1]
    if first < 0x80:
        return tag, at + 2, at + 2 + first
    count = first & 0x7F
    start = at + 2 + count
    return tag, start, start + int.from_bytes(data[at + 2 : start], "big")


def key_identifier(spki: bytes) -> bytes:
    """SHA-1 of the subjectPublicKey bits of a DER SubjectPublicKeyInfo (RFC 5280 4.2.1.2
    method 1, as cryptography's `SubjectKeyIdentifier.from_public_key`)."""
    _, start, _ = _read(spki, 0)  # the SubjectPublicKeyInfo SEQUENCE
    _, _, algorithm_end = _read(spki, start)  # its AlgorithmIdentifier
    tag, bits, end = _read(spki, algorithm_end)
    if tag != 0x03 or spki[bits] != 0:
        raise ValueError("not a SubjectPublicKeyInfo with a whole-octet BIT STRING")
    return hashlib.sha1(spki[bits + 1 : end]).digest()  # noqa: S324 - the RFC's identifier


def _sans(sans: Sans) -> bytes:
    names = [tlv(0x82, name.encode("ascii")) for name in sans.dns]  # dNSName, IA5String
    names += [tlv(0x87, ip.packed) for ip in sans.ips]  # iPAddress
    return seq(_SAN, tlv(0x04, seq(*names)))


def _key_usage(key_encipherment: bool) -> bytes:
    return cx509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    ).public_bytes()  # fmt: skip


@dataclass(frozen=True, slots=True)
class Leaf:
    """A signed leaf: its DER and what the inventory records of it."""

    der: bytes
    serial: int
    not_after: dt.datetime

    def pem(self) -> str:
        body = base64.b64encode(self.der).decode()
        lines = "\n".join([body[i : i + 64] for i in range(0, len(body), 64)])
        return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"

    def fingerprint(self) -> str:
        """SHA-256 of the DER, lowercase hex (as `x509.fingerprint`)."""
        return hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True, slots=True)
class Template:
    """What every leaf of one ECDSA CA shares, in DER."""

    key: ec.EllipticCurvePrivateKey
    algorithm: ec.ECDSA
    signature_algorithm: bytes  # AlgorithmIdentifier
    issuer: bytes  # the CA's subject Name
    ca_not_after: dt.datetime
    head: dict[tuple[Profile, bool], bytes]  # (profile, rsa subject key) -> leading extensions
    authority_key_id: bytes  # the AuthorityKeyIdentifier extension

    def issue(
        self,
        *,
        spki: bytes,
        common_name: str,
        sans: Sans,
        profile: Profile,
        lifetime: dt.timedelta,
        rsa_key: bool,
        serial: int | None = None,
        at: dt.datetime | None = None,
    ) -> Leaf:
        """A leaf for the subject key `spki` (DER SubjectPublicKeyInfo, from a verified CSR),
        CN `common_name` (checked by the caller), with the extensions `x509.issue` gives it."""
        serial = random_serial() if serial is None else serial
        start = (at or now()) - BACKDATE
        end = min(start + BACKDATE + lifetime, self.ca_not_after).replace(microsecond=0)
        start = start.replace(microsecond=0)
        extensions = [
            self.head[profile, rsa_key],
            seq(_SKI, tlv(0x04, tlv(0x04, key_identifier(spki)))),
            self.authority_key_id,
        ]
        if sans.dns or sans.ips:
            extensions.append(_sans(sans))
        subject = seq(tlv(0x31, seq(_CN, tlv(0x0C, common_name.encode()))))
        tbs = seq(
            b"\xa0\x03\x02\x01\x02",  # [0] version v3
            integer(serial),
            self.signature_algorithm,
            self.issuer,
            seq(_time(start), _time(end)),
            subject,
            spki,
            tlv(0xA3, seq(*extensions)),
        )
        signature = self.key.sign(tbs, self.algorithm)
        der = seq(tbs, self.signature_algorithm, tlv(0x03, b"\x00" + signature))
        return Leaf(der, serial, end)


def template(ca_key: PrivateKey, ca_cert: cx509.Certificate) -> Template | None:
    """The template of the CA's leaves; None for a key that is not ECDSA P-256/P-384."""
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.curve.key_size > 384:
        return None
    hash_ = hashes.SHA384() if ca_key.curve.key_size > 256 else hashes.SHA256()
    basic = _extension(
        ExtensionOID.BASIC_CONSTRAINTS.dotted_string,
        cx509.BasicConstraints(ca=False, path_length=None).public_bytes(),
        True,
    )
    head = {}
    for profile in Profile:
        usages = _extension(
            ExtensionOID.EXTENDED_KEY_USAGE.dotted_string,
            cx509.ExtendedKeyUsage(profile.usages).public_bytes(),
        )
        for rsa_key in (False, True):
            usage = _extension(ExtensionOID.KEY_USAGE.dotted_string, _key_usage(rsa_key), True)
            head[profile, rsa_key] = basic + usage + usages
    aki = cx509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return Template(
        key=ca_key,
        algorithm=ec.ECDSA(hash_),
        signature_algorithm=seq(oid(_ECDSA_SHA[hash_.name])),
        issuer=ca_cert.subject.public_bytes(),
        ca_not_after=ca_cert.not_valid_after_utc,
        head=head,
        authority_key_id=_extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string,
                                    aki.public_bytes()),
    )  # fmt: skip
