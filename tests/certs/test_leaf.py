"""The leaf template: the TBSCertificate it signs is CertificateBuilder's, byte for byte, for
every profile, subject key type and SAN set; the CA key's signature verifies (cryptography and
the real openssl); only ECDSA CA keys have a template."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from discoverd.certs import leaf, x509
from discoverd.certs.x509 import Profile, Sans

AT = dt.datetime(2026, 5, 17, 8, 30, 12, 654321, tzinfo=dt.UTC)
SERIAL = x509.random_serial()
SUBJECT_KEYS = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
SANS = {
    "none": Sans(),
    "ip": Sans(("localhost",), (ipaddress.ip_address("10.0.0.1"),)),
    "dns-and-ips": Sans(
        ("localhost", "infra0.abc.etcd.internal", "abc.etcd.internal"),
        tuple(ipaddress.ip_address(a) for a in ("10.0.0.1", "127.0.0.1", "::1", "fd00::7")),
    ),
}


def spki(key: x509.PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def both(ca, subject_key, sans, profile, lifetime, name="infra0"):
    """The template's leaf and the builder's, for the same serial and clock."""
    key, cert = ca
    made = leaf.template(key, cert)
    assert made is not None
    rsa_key = isinstance(subject_key, rsa.RSAPrivateKey)
    ours = made.issue(spki=spki(subject_key), common_name=name, sans=sans, profile=profile,
                      lifetime=lifetime, rsa_key=rsa_key, serial=SERIAL, at=AT)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(x509, "now", lambda: AT)
        patch.setattr(x509, "random_serial", lambda: SERIAL)
        theirs = x509.issue(key, cert, public_key=subject_key.public_key(), common_name=name,
                            sans=sans, profile=profile, lifetime=lifetime)  # fmt: skip
    return ours, theirs


@pytest.fixture(scope="module", params=["p256-ca", "p384-ca"])
def ca(request):
    curve = ec.SECP256R1() if request.param == "p256-ca" else ec.SECP384R1()
    return x509.new_ca("test CA", ec.generate_private_key(curve))


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("algo", sorted(SUBJECT_KEYS))
@pytest.mark.parametrize("sans", sorted(SANS))
def test_the_template_signs_what_the_builder_builds(ca, profile, algo, sans):
    ours, theirs = both(ca, SUBJECT_KEYS[algo](), SANS[sans], profile, dt.timedelta(days=90.5))
    cert = cx509.load_der_x509_certificate(ours.der)
    assert cert.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert cert.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert x509.issued_by(cert, ca[1])
    assert (ours.serial, ours.not_after) == (SERIAL, theirs.not_valid_after_utc)
    assert ours.pem() == x509.pem(cert) and ours.fingerprint() == x509.fingerprint(cert)


@pytest.fixture(scope="module")
def long_ca():
    """A CA valid for a century: its leaves may end after 2049 (GeneralizedTime)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(x509, "CA_LIFETIME", dt.timedelta(days=365 * 100))
        return x509.new_ca("long CA")


@pytest.mark.parametrize(
    ("lifetime", "name"),
    [
        (dt.timedelta(days=365 * 23), "utc-time-until-2049"),
        (dt.timedelta(days=365 * 30), "generalized-time-from-2050"),
        (dt.timedelta(days=365 * 200), "capped-at-the-ca"),
        (dt.timedelta(seconds=1), "a-second"),
        (dt.timedelta(days=1), "x" * 64),
    ],
)
def test_validity_and_long_names_match_the_builder(long_ca, lifetime, name):
    ours, theirs = both(long_ca, SUBJECT_KEYS["p256"](), SANS["ip"], Profile.PEER, lifetime, name)
    cert = cx509.load_der_x509_certificate(ours.der)
    assert cert.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.not_after == theirs.not_valid_after_utc <= long_ca[1].not_valid_after_utc
    if "generalized" in name:
        assert b"\x18\x0f2056" in ours.der  # GeneralizedTime, four-digit year


def test_openssl_verifies_a_template_leaf(tmp_path):
    key, cert = x509.new_ca("openssl CA")
    made = leaf.template(key, cert)
    assert made is not None
    ours = made.issue(spki=spki(SUBJECT_KEYS["p256"]()), common_name="infra0",
                      sans=SANS["dns-and-ips"], profile=Profile.PEER,
                      lifetime=dt.timedelta(days=30), rsa_key=False)  # fmt: skip
    (tmp_path / "ca.pem").write_text(x509.pem(cert))
    (tmp_path / "leaf.pem").write_text(ours.pem())
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr


@pytest.mark.parametrize(
    "key",
    [
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP521R1()),
    ],
    ids=["ed25519", "rsa", "p521"],
)
def test_only_ecdsa_p256_and_p384_ca_keys_have_a_template(key):
    assert leaf.template(key, x509.new_ca("other CA", key)[1]) is None


@pytest.mark.parametrize(
    "data", [b"\x30\x03\x30\x01\x00", b"\x30\x05\x30\x00\x03\x01\x07", b"\x30\x02\x30\x00"]
)
def test_key_identifier_refuses_what_is_not_a_public_key(data):
    with pytest.raises((ValueError, IndexError)):
        leaf.key_identifier(data)
