"""The command line: settings errors, and `discoverd new` against a running service."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from discoverd.cli import _SERVE_FLAGS, DEFAULT_SERVER, main, parser, settings_from
from discoverd.config import Settings
from discoverd.directory.rules import cluster_label as label
from discoverd.store.embedded import free_port
from tests.store.secure_etcd import Pki


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--listen", "nonsense"], "invalid listen"),
        (["serve", "--etcd", "localhost:2379"], "invalid etcd"),
        (["serve", "--token-ttl", "forever"], "invalid token_ttl"),
        (["serve", "--max-size", "0"], "invalid max_size"),
        (["serve", "--max-tokens", "0"], "invalid max_tokens"),
        (["serve", "--new-per-hour", "-1"], "invalid new_per_hour"),
    ],
)
def test_serve_refuses_bad_settings(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


async def test_new_prints_a_discovery_url(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", "-q", "--size", "5", "--server", server]) == 0
    url = capsys.readouterr().out.strip()
    assert re.fullmatch(r"http://discoverd\.test:8087/[0-9a-f]{32}", url)
    token = url.rsplit("/", 1)[1]
    assert (await (await client.get(f"/{token}/_config/size")).json())["node"]["value"] == "5"


async def test_new_reports_a_refusal(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", "--size", "0", "--server", server]) == 1
    assert "size must be a whole number from 1 to 99" in capsys.readouterr().err


def test_new_reports_an_unreachable_server(capsys):
    assert main(["new", "--timeout", "1s", "--server", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach" in capsys.readouterr().err


async def test_new_prints_what_the_nodes_need(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    argv = ["new", "--size", "3", "--name", "web" + os.urandom(3).hex(), "--server", server]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    url = re.fullmatch(r"discovery URL \(etcd <= 3\.6\): +(http://discoverd\.test:8087/(\w{32}))",
                       lines[1])  # fmt: skip
    assert url, out
    token = url.group(2)
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    # the v3 flags first: the only discovery etcd 3.7 has
    assert lines[0] == f"v3 flags (etcd >= 3.6):      {view['discovery_v3']['flags']}"
    assert f"--discovery-token={token} --discovery-endpoints=127.0.0.1:" in lines[0]
    assert f"CA sha256:                   {view['ca_sha256']}" in out
    assert f"DNS domain:                  {label(token)}.etcd.internal, web" in out
    served = await (await client.get("/api/v1/join.py")).read()
    join_sha256 = hashlib.sha256(served).hexdigest()
    assert f"join.py sha256:              {join_sha256}" in out
    assert f"DISCOVERD_JOIN_SHA256={join_sha256}\n" in out and f"DISCOVERD_TOKEN={token}" in out
    assert "PIP" not in out
    assert f"DISCOVERD_SERVER={server}\n" in out


@pytest.mark.parametrize(
    ("flag", "pattern"),
    [
        ("-q", r"http://discoverd\.test:8087/[0-9a-f]{32}"),  # scripts: the v2 URL, as always
        ("--v3", r"--discovery-token=[0-9a-f]{32} --discovery-endpoints=127\.0\.0\.1:\d+"),
    ],
)
async def test_new_prints_one_line_for_scripts(client, capsys, flag, pattern):
    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", flag, "--server", server]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(pattern + "\n", out), out


def test_new_takes_one_of_quiet_and_v3(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["new", "-q", "--v3"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["new", "--server", "127.0.0.1:8087"],
        ["new", "--server", "localhost:8087"],
        ["status", "ab" * 16, "--server", "discoverd.internal:8087"],
        ["status", "discoverd.internal:8087/" + "ab" * 16],
        ["join", "--server", "localhost:8087", "--token", "ab" * 16, "--name", "a",
         "--ip", "10.0.0.1", "--out", "/nonexistent/out", "--etcd-version", "3.7"],
    ],
)  # fmt: skip
def test_a_server_without_a_scheme_is_refused_at_once(argv, capsys):
    started = time.monotonic()
    assert main([*argv, "--timeout", "30s"]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - started < 5  # no retries
    assert "http://" in err and "next attempt" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["new", "status"])
def test_new_and_status_say_every_retry(command, capsys):
    server = f"http://127.0.0.1:{free_port()}"
    argv = [command, *(["ab" * 16] if command == "status" else []), "--server", server]
    assert main([*argv, "--timeout", "2s"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 2, lines
    for line in lines[:-1]:
        assert re.fullmatch(
            rf"discoverd {command}: cannot reach {server}: .+; next attempt in [0-9.]+s "
            r"\(giving up in \d+s\)",
            line,
        ), line
    assert lines[-1].startswith(f"discoverd {command}: gave up: cannot reach {server}")


async def test_status_of_an_unknown_token_says_so(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    unknown = os.urandom(16).hex()  # never minted (other tests use fixed tokens)
    assert await asyncio.to_thread(main, ["status", unknown, "--server", server]) == 1
    assert capsys.readouterr().err == (
        "discoverd status: no such discovery token (expired or mistyped)\n"
    )


def test_status_uses_the_server_default_of_new(monkeypatch):
    monkeypatch.delenv("DISCOVERD_SERVER", raising=False)
    args = parser().parse_args(["status", "ab" * 16])
    assert args.server == DEFAULT_SERVER == parser().parse_args(["new"]).server
    monkeypatch.setenv("DISCOVERD_SERVER", "http://disco.example:8087")
    for argv in (
        ["status", "x"],
        ["new"],
        ["join", "--name", "a", "--ip", "1.2.3.4", "--out", "o"],
    ):
        assert parser().parse_args(argv).server == "http://disco.example:8087"


def subcommand(name: str) -> argparse.ArgumentParser:
    top = parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize("name", ["new", "status", "join"])
def test_every_flag_of_the_cluster_commands_says_what_it_does(name):
    command = subcommand(name)
    for action in command._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    text = command.format_help()
    assert "DISCOVERD_SERVER" in text
    if name == "join":
        assert "DISCOVERD_TOKEN" in text


@pytest.mark.parametrize(("flags", "status"), [([], 403), (["--allow-root"], 200)])
async def test_new_allows_etcds_root_only_when_asked(client, capsys, tmp_path, flags, status):
    from tests.certs.test_handlers import csr, enroll

    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", "-q", *flags, "--server", server]) == 0
    token = capsys.readouterr().out.strip().rsplit("/", 1)[1]
    assert (await enroll(client, token, "root", csr(tmp_path, "root"), "client")).status == status


# A valid, non-default value for each serve flag, and the flags it needs beside it ({pki},
# {tmp}: real files made by the fixtures). A new flag must be added here: the test below fails
# for a flag without a sample.
HTTPS = ("--etcd", "https://127.0.0.1:2379")
SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "--listen": ("127.0.0.1:9999", ()),
    "--public-url": ("https://disco.example.com/d", ()),
    "--etcd": ("http://10.0.0.9:2379,http://10.0.0.10:2379", ()),
    "--grpc-listen": ("127.0.0.1:9998", ()),
    "--grpc-public-endpoints": ("disco.example.com:2379", ()),
    "--grpc-cert": ("/etc/d/grpc.pem", ("--grpc-key", "/etc/d/grpc-key.pem")),
    "--grpc-key": ("/etc/d/grpc-key.pem", ("--grpc-cert", "/etc/d/grpc.pem")),
    "--etcd-cacert": ("{pki}/ca.pem", HTTPS),
    "--etcd-cert": ("{pki}/client.pem", ("--etcd-key", "{pki}/client-key.pem", *HTTPS)),
    "--etcd-key": ("{pki}/client-key.pem", ("--etcd-cert", "{pki}/client.pem", *HTTPS)),
    "--etcd-user": ("discoverd", ("--etcd-password", "s3cret", *HTTPS)),
    "--etcd-password": ("s3cret", ("--etcd-user", "discoverd", *HTTPS)),
    "--etcd-password-file": ("{tmp}/password", ("--etcd-user", "discoverd", *HTTPS)),
    "--dns-listen": ("127.0.0.1:9997", ()),
    "--dns-zone": ("disco.example.org", ()),
    "--dns-rate": ("20", ()),
    "--data-dir": ("/var/lib/discoverd", ()),
    "--token-ttl": ("2d", ()),
    "--max-size": ("7", ()),
    "--wait-timeout": ("20s", ()),
    "--retry-window": ("5m", ()),
    "--new-rate": ("5", ()),
    "--new-burst": ("9", ()),
    "--new-per-hour": ("50", ()),
    "--max-tokens": ("500", ()),
    "--trusted-proxy": ("10.0.0.0/8,192.168.0.0/16", ()),
    "--etcd-timeout": ("3s", ()),
    "--cert-ttl": ("30d", ()),
    "--service-key-file": ("/etc/d/service.key", ()),
    "--etcd-binary": ("/usr/bin/etcd", ()),
    "--log-level": ("debug", ()),
    "--log-format": ("text", ()),
    "--admin-token-file": ("/etc/d/admin.token", ()),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ca.pem, client.pem and client-key.pem (real PEM files)."""
    return Pki.make(tmp_path_factory.mktemp("pki")).directory


def _variable(flag: str) -> str:
    return "DISCOVERD_" + flag.removeprefix("--").upper().replace("-", "_")


@pytest.mark.parametrize("flag", list(_SERVE_FLAGS))
def test_every_serve_flag_is_also_read_from_its_variable(flag, monkeypatch, pki, tmp_path):
    """The README's one rule: `--some-flag` is also read from DISCOVERD_SOME_FLAG."""
    for name in list(os.environ):
        if name.startswith("DISCOVERD_"):
            monkeypatch.delenv(name)
    assert flag in SAMPLES, f"add a sample value for {flag} to SAMPLES"
    field = _SERVE_FLAGS[flag][0]
    assert field == flag.removeprefix("--").replace("-", "_"), "the flag names the field"
    (tmp_path / "password").write_text("s3cret\n")
    value, *companions = (
        text.format(pki=pki, tmp=tmp_path) for text in (SAMPLES[flag][0], *SAMPLES[flag][1])
    )
    default = getattr(Settings(), field)
    from_flags = settings_from(parser().parse_args(["serve", flag, value, *companions]))
    for companion, companion_value in zip(companions[::2], companions[1::2], strict=True):
        monkeypatch.setenv(_variable(companion), companion_value)
    monkeypatch.setenv(_variable(flag), value)
    from_env = settings_from(parser().parse_args(["serve"]))
    assert getattr(from_flags, field) != default, "the sample must not be the default"
    assert getattr(from_env, field) == getattr(from_flags, field)


def _subparsers(top):
    for action in top._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                for inner, deeper in _subparsers(sub):
                    yield f"{name} {inner}", deeper


def test_every_flag_of_every_command_has_help():
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, sub in _subparsers(parser())
        for action in sub._actions
        if action.option_strings and action.option_strings[0] != "-h" and not action.help
    ]
    assert missing == []


def test_serve_help_names_each_variable(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for flag, (field, _) in _SERVE_FLAGS.items():
        assert f"[env DISCOVERD_{field.upper()}]" in text, flag


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cert", "{pki}/client.pem"], "--cert and --key go together"),
        (["--key", "{pki}/client-key.pem"], "--cert and --key go together"),
        (["--cert", "{pki}/client.pem", "--key", "{pki}/nope.pem"], "not a PEM certificate and its key"),
        (["--cert", "{pki}/ca.pem", "--key", "{pki}/client-key.pem"], "not a PEM certificate and its key"),
    ],
)  # fmt: skip
def test_status_refuses_a_bad_client_certificate_at_once(flags, message, pki, capsys):
    server = f"http://127.0.0.1:{free_port()}"  # never asked: the files are checked first
    argv = ["status", "ab" * 16, "--server", server, *(f.format(pki=pki) for f in flags)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"discoverd status: {message}") or message in err, err
    assert len(err.strip().splitlines()) == 1 and "cannot reach" not in err


def test_cert_revoke_takes_the_backing_etcd_flags_of_serve():
    """The same names (and so the same DISCOVERD_* variables) as `serve`."""
    cert = subcommand("cert")
    actions = next(a for a in cert._actions if isinstance(a, argparse._SubParsersAction))
    revoke = {
        flag for action in actions.choices["revoke"]._actions for flag in action.option_strings
    }
    access = {"--etcd-cacert", "--etcd-cert", "--etcd-key", "--etcd-user", "--etcd-password",
              "--etcd-password-file"}  # fmt: skip
    assert access <= set(_SERVE_FLAGS)
    assert access <= revoke
