"""X.509 mechanics, checked with the real openssl: chains, usages, SANs, CRLs, sealed keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from discoverd.certs import pki
from discoverd.certs.pki import Profile, Sans
from discoverd.errors import Invalid


def openssl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, text=True, check=False
    )


def make_csr(tmp_path, algo: str, sans: str = "", cn: str = "infra0") -> str:
    key = tmp_path / f"{algo}.key"
    keygen = {
        "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "p521": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
        "ed25519": ["-newkey", "ed25519"],
        "rsa2048": ["-newkey", "rsa:2048"],
        "rsa1024": ["-newkey", "rsa:1024"],
    }[algo]
    extra = ["-addext", f"subjectAltName={sans}"] if sans else []
    out = openssl(
        "req", "-new", *keygen, "-nodes", "-keyout", str(key), "-subj", f"/CN={cn}", *extra
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def ca():
    return pki.new_ca("test CA")


@pytest.mark.parametrize("algo", ["p256", "p384", "ed25519", "rsa2048"])
def test_accepted_keys_and_openssl_verifies_the_chain(tmp_path, ca, algo):
    csr = pki.load_csr(make_csr(tmp_path, algo, "DNS:infra0.example,IP:10.0.0.1"))
    key, ca_cert = ca
    sans = pki.csr_sans(csr)
    cert = pki.issue(key, ca_cert, public_key=csr.public_key(), common_name="infra0", sans=sans,
                      profile=Profile.PEER, lifetime=dt.timedelta(days=90))  # fmt: skip
    (tmp_path / "ca.pem").write_text(pki.pem(ca_cert))
    (tmp_path / "leaf.pem").write_text(pki.pem(cert))
    verify = openssl("verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem"))
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr
    text = openssl("x509", "-in", str(tmp_path / "leaf.pem"), "-noout", "-text").stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text and "DNS:infra0.example" in text and "IP Address:10.0.0.1" in text
    assert "Subject Key Identifier" in text and "Authority Key Identifier" in text
    assert cert.serial_number.bit_length() == 128
    assert cert.not_valid_before_utc < pki.now() - dt.timedelta(minutes=4)  # backdated


@pytest.mark.parametrize(("algo", "reason"), [("rsa1024", "too small"), ("p521", "not accepted")])
def test_refused_keys(tmp_path, algo, reason):
    with pytest.raises(Invalid, match=reason):
        pki.load_csr(make_csr(tmp_path, algo))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a PEM"),
        ("garbage", "not a PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a PEM",
        ),
        ("x" * 20000, "over"),
    ],
)
def test_garbage_csrs(text, reason):
    with pytest.raises(Invalid, match=reason):
        pki.load_csr(text)


def test_a_tampered_csr_fails_its_signature(tmp_path):
    from cryptography import x509 as cx
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        cx.CertificateSigningRequestBuilder()
        .subject_name(cx.Name([cx.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # flip a byte of the signature
    pem = cx.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(Invalid, match="signature does not verify"):
        pki.load_csr(pem)


def test_client_profile_is_client_auth_only(tmp_path, ca):
    csr = pki.load_csr(make_csr(tmp_path, "p256", cn="root"))
    key, ca_cert = ca
    cert = pki.issue(key, ca_cert, public_key=csr.public_key(), common_name="root", sans=Sans(),
                      profile=Profile.CLIENT, lifetime=dt.timedelta(days=1))  # fmt: skip
    (tmp_path / "c.pem").write_text(pki.pem(cert))
    text = openssl("x509", "-in", str(tmp_path / "c.pem"), "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in text and "Server Authentication" not in text
    assert "Subject Alternative Name" not in text


def test_crl_lists_revoked_serials_for_openssl(tmp_path, ca):
    key, ca_cert = ca
    crl = pki.crl(key, ca_cert, [(0xABCDEF, pki.now())], number=3)
    (tmp_path / "crl.pem").write_text(pki.pem(crl))
    text = openssl("crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text").stdout
    assert "Serial Number: ABCDEF" in text and "X509v3 CRL Number" in text


def test_non_dns_ip_sans_are_refused(tmp_path):
    csr = pki.load_csr(make_csr(tmp_path, "p256", "email:a@example.com"))
    with pytest.raises(Invalid, match="only DNS and IP SANs"):
        pki.csr_sans(csr)


def test_sealed_keys_open_only_with_the_same_key_and_token():
    key = pki.new_key()
    service_key = os.urandom(32)
    blob = pki.seal(key, service_key, "token-a")
    assert pki.spki_sha256(
        pki.unseal(blob, service_key, "token-a").public_key()
    ) == pki.spki_sha256(key.public_key())
    for other_key, token in ((os.urandom(32), "token-a"), (service_key, "token-b")):
        with pytest.raises(pki.SealError):
            pki.unseal(blob, other_key, token)
    assert pki.key_pem(key).encode() not in blob


def test_ip_sans_round_trip():
    assert Sans((), (ipaddress.ip_address("::1"),)).as_strings() == ["::1"]
