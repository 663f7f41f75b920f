"""Settings: parsing, validation, and the environment as the only other source."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from discoverd.config import HostPort, Settings, deprecated_variables, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("50s", 50),
        ("10m", 600),
        ("1h30m", 5400),
        ("7d", 604800),
        ("250ms", 0.25),
        ("2w", 1209600),
        ("1.5h", 5400),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-5s", "0", "1h 30m", "h1", "5s10"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "host", "port", "url"),
    [
        ("127.0.0.1:8087", "127.0.0.1", 8087, "http://127.0.0.1:8087"),
        ("[::1]:53", "::1", 53, "http://[::1]:53"),
        (":8087", "0.0.0.0", 8087, "http://127.0.0.1:8087"),
        ("0.0.0.0:80", "0.0.0.0", 80, "http://127.0.0.1:80"),
    ],
)
def test_host_port(text, host, port, url):
    parsed = HostPort.parse(text)
    assert (parsed.host, parsed.port, parsed.url()) == (host, port, url)


@pytest.mark.parametrize("text", ["8087", "host", "1.2.3.4:99999", "[::1:53", "a:b"])
def test_bad_host_port(text):
    with pytest.raises(ValueError):
        HostPort.parse(text)


def test_defaults_match_the_contract():
    settings = Settings()
    assert str(settings.listen) == "127.0.0.1:8087"
    assert settings.base_url == "http://127.0.0.1:8087"
    assert settings.embedded
    assert settings.token_ttl == 7 * 86400
    assert settings.max_size == 99
    assert settings.wait_timeout == 50


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("DISCOVERD_ETCD", "http://10.0.0.1:2379, http://10.0.0.2:2379/")
    monkeypatch.setenv("DISCOVERD_TOKEN_TTL", "1d")
    monkeypatch.setenv("DISCOVERD_LISTEN", "[::1]:9000")
    settings = Settings()
    assert settings.etcd == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert settings.token_ttl == 86400
    assert settings.listen.port == 9000
    assert not settings.embedded


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("DISCOVERD_MAX_SIZE", "5")
    assert Settings(max_size=7).max_size == 7


@pytest.mark.parametrize(
    "given",
    [
        {"etcd": "localhost:2379"},
        {"etcd": "ftp://x:1"},
        {"public_url": "discovery.example.com"},
        {"max_size": 0},
        {"default_size": 10, "max_size": 5},
        {"token_ttl": "10s"},
        {"wait_timeout": "2h"},
        {"log_level": "loud"},
        {"unknown": 1},
    ],
)
def test_invalid_settings(given):
    with pytest.raises(ValidationError):
        Settings(**given)


def test_public_url_path_becomes_the_route_prefix():
    settings = Settings(public_url="https://bootstrap.example.com/discovery/")
    assert settings.base_url == "https://bootstrap.example.com/discovery"
    assert settings.route_prefix == "/discovery"


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("DISCOVERD_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("environ", "proxies", "warned"),
    [
        ({"DISCOVERD_TRUSTED_PROXY": "10.0.0.0/8"}, ("10.0.0.0/8",), False),
        ({"DISCOVERD_TRUSTED_PROXIES": "10.0.0.0/8"}, ("10.0.0.0/8",), True),  # deprecated
        (
            {"DISCOVERD_TRUSTED_PROXY": "10.1.0.0/16", "DISCOVERD_TRUSTED_PROXIES": "10.0.0.0/8"},
            ("10.1.0.0/16",),
            True,
        ),
    ],
)
def test_the_old_plural_trusted_proxies_still_reads_with_a_warning(
    clean_env, environ, proxies, warned
):
    for name, value in environ.items():
        clean_env.setenv(name, value)
    assert Settings().trusted_proxy == proxies
    warnings = deprecated_variables()
    assert bool(warnings) is warned
    if warned:
        assert "DISCOVERD_TRUSTED_PROXIES is deprecated" in warnings[0]
        assert "use DISCOVERD_TRUSTED_PROXY" in warnings[0]


def test_a_flag_wins_over_the_deprecated_variable(clean_env):
    clean_env.setenv("DISCOVERD_TRUSTED_PROXIES", "10.0.0.0/8")
    assert Settings(trusted_proxy="192.168.0.0/16").trusted_proxy == ("192.168.0.0/16",)
