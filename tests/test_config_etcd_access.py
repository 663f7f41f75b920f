"""The backing etcd's TLS and RBAC settings: flags and DISCOVERD_* variables, checked at the
edge so a wrong file or a missing half is a startup error, not a 503 later."""

from __future__ import annotations

from pathlib import Path

import pytest

from discoverd.cli import main, parser, settings_from
from discoverd.config import Settings
from tests.store.secure_etcd import Pki

HTTPS = "https://127.0.0.1:2379"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def test_every_flag_reaches_settings(pki, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    args = parser().parse_args(
        ["serve", "--etcd", HTTPS, "--etcd-cacert", str(pki.ca),
         "--etcd-cert", str(pki.cert("client")), "--etcd-key", str(pki.key("client")),
         "--etcd-user", "discoverd", "--etcd-password-file", str(secret)]
    )  # fmt: skip
    settings = settings_from(args)
    assert settings.etcd_cacert == pki.ca
    assert (settings.etcd_cert, settings.etcd_key) == (pki.cert("client"), pki.key("client"))
    assert settings.etcd_user == "discoverd"
    assert settings.etcd_secret == "s3cret"  # the file's trailing newline is not part of it
    assert "s3cret" not in repr(settings)


def test_the_environment_names_them_too(pki, monkeypatch):
    for name, value in {
        "DISCOVERD_ETCD": HTTPS,
        "DISCOVERD_ETCD_CACERT": str(pki.ca),
        "DISCOVERD_ETCD_CERT": str(pki.cert("client")),
        "DISCOVERD_ETCD_KEY": str(pki.key("client")),
        "DISCOVERD_ETCD_USER": "discoverd",
        "DISCOVERD_ETCD_PASSWORD": "from-env",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.etcd_cacert == pki.ca and settings.etcd_user == "discoverd"
    assert settings.etcd_secret == "from-env"


def _bad(pki: Pki, tmp_path: Path, case: str) -> dict[str, object]:
    empty = tmp_path / "empty"
    empty.write_text("")
    cert, key = pki.cert("client"), pki.key("client")
    return {
        "missing-ca": {"etcd": HTTPS, "etcd_cacert": tmp_path / "nope.pem"},
        "not-a-ca": {"etcd": HTTPS, "etcd_cacert": empty},
        "cert-without-key": {"etcd": HTTPS, "etcd_cert": cert},
        "key-of-another-cert": {"etcd": HTTPS, "etcd_cert": cert, "etcd_key": pki.key("rogue")},
        "tls-to-http": {"etcd": "http://127.0.0.1:2379", "etcd_cacert": pki.ca},
        "tls-to-embedded": {"etcd_cert": cert, "etcd_key": key},
        "user-without-password": {"etcd": HTTPS, "etcd_user": "discoverd"},
        "password-without-user": {"etcd": HTTPS, "etcd_password": "x"},
        "two-passwords": {"etcd": HTTPS, "etcd_user": "u", "etcd_password": "x",
                          "etcd_password_file": empty},
        "empty-password-file": {"etcd": HTTPS, "etcd_user": "u", "etcd_password_file": empty},
        "user-on-embedded": {"etcd_user": "u", "etcd_password": "x"},
        "blank-user": {"etcd": HTTPS, "etcd_user": " ", "etcd_password": "x"},
    }[case]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing-ca", "no such file"),
        ("not-a-ca", "--etcd-cacert"),
        ("cert-without-key", "--etcd-cert and --etcd-key go together"),
        ("key-of-another-cert", "--etcd-key"),
        ("tls-to-http", "https:// --etcd endpoint"),
        ("tls-to-embedded", "https:// --etcd endpoint"),
        ("user-without-password", "needs --etcd-password"),
        ("password-without-user", "needs --etcd-user"),
        ("two-passwords", "not both"),
        ("empty-password-file", "needs --etcd-password"),
        ("user-on-embedded", "the embedded etcd has no auth"),
        ("blank-user", "--etcd-user is empty"),
    ],
)
def test_a_wrong_combination_is_refused_with_the_flag_named(pki, tmp_path, case, words):
    with pytest.raises(ValueError, match=words):
        Settings(**_bad(pki, tmp_path, case))  # type: ignore[arg-type]


def test_serve_says_which_file_is_wrong(tmp_path, capsys):
    missing = tmp_path / "ca.pem"
    assert main(["serve", "--etcd", HTTPS, "--etcd-cacert", str(missing)]) == 2
    assert f"invalid etcd_cacert: Value error, {missing}: no such file" in capsys.readouterr().err
