"""Offline CA work for operators, file in and file out, cfssl-compatible.

    discoverd ca init --dir DIR                     DIR/ca.pem, DIR/ca-key.pem (0600)
    discoverd cert issue --ca-dir DIR --csr-json F  <name>.pem, <name>-key.pem, <name>.csr

The CSR JSON is cfssl's (`CN`, `hosts`, `key{algo,size}`, `names[{C,ST,L,O,OU}]`) and the
files are named as `cfssljson -bare <name>` names them, so the cfssl recipes of the etcd guides
keep working. Peer and server certificates get serverAuth + clientAuth and always localhost,
127.0.0.1 and ::1, as online.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from discoverd.certs import pki, policy
from discoverd.certs.pki import Profile, Sans
from discoverd.errors import Invalid
from discoverd.join import write_private, write_public

_NAME_FIELDS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
}


class KeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algo: str = "ecdsa"
    size: int = 256


class CsrJson(BaseModel):
    """cfssl's CSR JSON."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    cn: str = Field(alias="CN", min_length=1, max_length=64)
    hosts: list[str] = Field(default_factory=list, max_length=100)
    key: KeySpec = Field(default_factory=KeySpec)
    names: list[dict[str, str]] = Field(default_factory=list)


def ca_init(directory: Path, common_name: str = "discoverd etcd CA") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() or key_path.exists():
        raise Invalid(f"{directory} already holds a CA (ca.pem / ca-key.pem): not overwriting it")
    key, cert = pki.new_ca(common_name)
    write_private(key_path, pki.key_pem(key))
    write_public(cert_path, pki.pem(cert))
    return cert_path


def load_csr_json(path: Path) -> CsrJson:
    try:
        return CsrJson.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            raise Invalid(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
        raise Invalid(f"{path}: not a readable CSR JSON file ({exc})") from exc


def cert_issue(
    ca_dir: Path,
    request: CsrJson,
    *,
    profile: Profile,
    out_dir: Path,
    bare: str,
    lifetime: dt.timedelta,
) -> Path:
    ca_key = pki.load_key((ca_dir / "ca-key.pem").read_text())
    ca_cert = pki.load_cert((ca_dir / "ca.pem").read_text())
    key = pki.new_key(request.key.algo, request.key.size)
    sans = _hosts(request.hosts)
    if profile is Profile.CLIENT:
        sans = Sans()
    else:
        sans = Sans(
            tuple(dict.fromkeys((*sans.dns, *policy.ALWAYS_DNS))),
            tuple(dict.fromkeys((*sans.ips, *policy.ALWAYS_IPS))),
        )
    subject = [cx509.NameAttribute(NameOID.COMMON_NAME, request.cn)]
    for entry in request.names:
        for field, oid in _NAME_FIELDS.items():
            if entry.get(field):
                subject.append(cx509.NameAttribute(oid, entry[field]))
    csr = cx509.CertificateSigningRequestBuilder().subject_name(cx509.Name(subject))
    if sans.dns or sans.ips:
        csr = csr.add_extension(sans.extension(), critical=False)
    signed_csr = csr.sign(key, None if request.key.algo == "ed25519" else hashes.SHA256())
    cert = pki.issue(
        ca_key,
        ca_cert,
        public_key=key.public_key(),
        common_name=request.cn,
        sans=sans,
        profile=profile,
        lifetime=lifetime,
        subject=cx509.Name(subject),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_private(out_dir / f"{bare}-key.pem", pki.key_pem(key))
    write_public(
        out_dir / f"{bare}.csr", signed_csr.public_bytes(serialization.Encoding.PEM).decode()
    )
    cert_path = out_dir / f"{bare}.pem"
    write_public(cert_path, pki.pem(cert))
    return cert_path


def _hosts(hosts: list[str]) -> Sans:
    dns, ips = [], []
    for host in hosts:
        try:
            ips.append(ipaddress.ip_address(host))
        except ValueError:
            if "@" in host or "://" in host or "*" in host:
                raise Invalid(
                    f"host {host!r}: only DNS names and IPs (no email, URI, wildcard)"
                ) from None
            dns.append(host.lower())
    return Sans(tuple(dns), tuple(ips))
