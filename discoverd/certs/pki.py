"""X.509 mechanics with `cryptography` only: keys, CAs, CSRs, leaves, CRLs, sealing CA keys.

No policy lives here (which SANs a member may get is `certs.authority`), and no storage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from discoverd.errors import Invalid

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
BACKDATE = dt.timedelta(minutes=5)
CA_LIFETIME = dt.timedelta(days=3650)
MAX_CSR_BYTES = 16 * 1024
IP_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)  # a SAN names addresses, not networks


class Profile(Enum):
    """What etcd needs: peers and servers dial as well as listen, so both carry clientAuth."""

    PEER = "peer"
    SERVER = "server"
    CLIENT = "client"

    @property
    def usages(self) -> list[x509.ObjectIdentifier]:
        if self is Profile.CLIENT:
            return [ExtendedKeyUsageOID.CLIENT_AUTH]
        return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


@dataclass(frozen=True, slots=True)
class Sans:
    dns: tuple[str, ...] = ()
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()

    def extension(self) -> x509.SubjectAlternativeName:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in self.dns]
        names += [x509.IPAddress(ip) for ip in self.ips]
        return x509.SubjectAlternativeName(names)

    def as_strings(self) -> list[str]:
        return [*self.dns, *(str(ip) for ip in self.ips)]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key(algo: str = "ecdsa", size: int = 256) -> PrivateKey:
    """A private key as cfssl's `key{algo,size}` names it (default ECDSA P-256)."""
    if algo == "ecdsa":
        curves: dict[int, ec.EllipticCurve] = {
            256: ec.SECP256R1(),
            384: ec.SECP384R1(),
            521: ec.SECP521R1(),
        }
        if size not in curves:
            raise Invalid("ecdsa key size must be 256, 384 or 521")
        return ec.generate_private_key(curves[size])
    if algo == "rsa":
        if not 2048 <= size <= 8192:
            raise Invalid("rsa key size must be 2048 to 8192")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if algo == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise Invalid("key algo must be ecdsa, rsa or ed25519", cause=algo[:32])


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def new_ca(common_name: str, key: PrivateKey | None = None) -> tuple[PrivateKey, x509.Certificate]:
    key = key or new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = now() - BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(start + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, _hash_for(key))
    )  # fmt: skip
    return key, cert


def random_serial() -> int:
    """128 random bits, positive (RFC 5280 allows up to 20 octets)."""
    return secrets.randbits(128) | (1 << 127)


@dataclass(frozen=True, slots=True)
class Request:
    """A checked CSR, read once: its public key, that key's SHA-256 and the SANs it asks for."""

    public_key: PublicKey
    spki_sha256: str
    sans: Sans


def load_request(pem: str) -> Request:
    """`load_csr`, with what an enrollment needs from it worked out once."""
    csr, public = _load_csr(pem)
    return Request(public, spki_sha256(public), csr_sans(csr))


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    """A CSR whose signature verifies and whose key is one etcd and we accept."""
    return _load_csr(pem)[0]


def _load_csr(pem: str) -> tuple[x509.CertificateSigningRequest, PublicKey]:
    if len(pem) > MAX_CSR_BYTES:
        raise Invalid(f"csr is over {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, TypeError) as exc:
        raise Invalid("csr is not a PEM certificate request") from exc
    if not csr.is_signature_valid:
        raise Invalid("csr signature does not verify")
    public = csr.public_key()
    check_public_key(public)
    return csr, cast(PublicKey, public)  # what check_public_key lets through


def check_public_key(public: object) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ("secp256r1", "secp384r1"):
            raise Invalid(f"ecdsa curve {public.curve.name} is not accepted (P-256 or P-384)")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise Invalid(f"rsa key of {public.key_size} bits is too small (2048 at least)")
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        raise Invalid("key type is not accepted (ECDSA P-256/P-384, Ed25519 or RSA >= 2048)")


def csr_sans(csr: x509.CertificateSigningRequest) -> Sans:
    """The DNS and IP SANs a CSR asks for; any other kind of SAN is refused."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Sans()
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in ext:
        if isinstance(name, x509.DNSName):
            dns.append(name.value)
        elif isinstance(name, x509.IPAddress) and isinstance(name.value, IP_TYPES):
            ips.append(name.value)
        else:
            raise Invalid("only DNS and IP SANs are accepted (no email, URI or other names)")
    return Sans(tuple(dns), tuple(ips))


def issue(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    public_key: object,
    common_name: str,
    sans: Sans,
    profile: Profile,
    lifetime: dt.timedelta,
    subject: x509.Name | None = None,
    authority_key_id: x509.AuthorityKeyIdentifier | None = None,
) -> x509.Certificate:
    """A leaf for `public_key` signed by the CA; `authority_key_id`, the CA's, saves working
    it out for every leaf (`key_identifier`)."""
    start = now() - BACKDATE
    end = min(start + BACKDATE + lifetime, ca_cert.not_valid_after_utc)
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(profile.usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(authority_key_id or key_identifier(ca_key), critical=False)
    )  # fmt: skip
    if sans.dns or sans.ips:
        builder = builder.add_extension(sans.extension(), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def crl(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[tuple[int, dt.datetime]],
    number: int,
    lifetime: dt.timedelta = dt.timedelta(days=7),
    *,
    at: dt.datetime | None = None,
    authority_key_id: x509.AuthorityKeyIdentifier | None = None,
) -> x509.CertificateRevocationList:
    """A CRL of `revoked` (serial, revocation time) signed `at` (now): lastUpdate `at` (less
    BACKDATE, for clocks behind ours), nextUpdate `lifetime` later."""
    start = (at or now()) - BACKDATE
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(start + lifetime)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id or key_identifier(ca_key), critical=False)
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, _hash_for(ca_key))


def key_identifier(ca_key: PrivateKey) -> x509.AuthorityKeyIdentifier:
    """The authority key identifier of what `ca_key` signs."""
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())


def pem(item: x509.Certificate | x509.CertificateRevocationList) -> str:
    return item.public_bytes(serialization.Encoding.PEM).decode()


def der(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return item.public_bytes(serialization.Encoding.DER)


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca` signed `cert` (issuer name and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def cert_sans(cert: x509.Certificate) -> Sans:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Sans()
    ips = tuple(ext.get_values_for_type(x509.IPAddress))
    return Sans(tuple(ext.get_values_for_type(x509.DNSName)), ips)  # type: ignore[arg-type]


def load_cert(text: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except (ValueError, TypeError) as exc:
        raise Invalid("not a PEM certificate") from exc


def load_key(text: str) -> PrivateKey:
    key = serialization.load_pem_private_key(text.encode(), password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise Invalid("unsupported private key type")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (what `--ca-sha256` pins)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def spki_sha256(public_key: object) -> str:
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


# -- sealing CA keys with the service key -------------------------------------------------------


class SealError(Exception):
    """A sealed key could not be opened (wrong service key or tampered data)."""


def seal(key: PrivateKey, service_key: bytes, context: str) -> bytes:
    """AES-256-GCM of the PKCS#8 key; `context` (the token) is bound as associated data."""
    nonce = os.urandom(12)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return nonce + AESGCM(service_key).encrypt(nonce, der, context.encode())


def unseal(blob: bytes, service_key: bytes, context: str) -> PrivateKey:
    try:
        der = AESGCM(service_key).decrypt(blob[:12], blob[12:], context.encode())
    except (InvalidTag, ValueError) as exc:
        raise SealError("cannot open the CA key: wrong service key or damaged data") from exc
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    )
    return key
