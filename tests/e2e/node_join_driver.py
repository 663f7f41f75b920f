"""Runs inside a private network and mount namespace (`unshare --mount --net`), started by
test_node_join: the node bootstrap of deploy/cloud-init/etcd-member.yaml, end to end.

In its own namespaces only (nothing on the real machine's network, /etc or /run changes):

  * `lo` up, a bridge br0 with 10.77.0.1/24, a backing etcd on loopback and ONE `discoverd serve`
    on 10.77.0.1:8087 with its DNS on 10.77.0.1:53;
  * four "hosts" h1..h4: network namespaces (`ip netns`) with a veth on br0 (10.77.0.11..14),
    `lo` up and /etc/netns/<host>/resolv.conf = `nameserver 10.77.0.1`. /run and /etc/netns
    live on a tmpfs and an overlay of /etc that exist only in this mount namespace;
  * `discoverd new` (the real CLI) mints the token; the shipped user-data is rendered with it,
    and its join script runs on h1..h3 at once (`ip netns exec hN sh etcd-member-join`);
  * on each host the stock etcd starts with ONLY the variables of the etcd.env the join wrote
    (`env -i`), and the unit's ExecStart (its /usr/bin/etcd swapped for the etcd under test), as
    the unit's User= (`etcd`, when that user exists here; root otherwise);
  * it checks health, `etcdctl member list` / put / get with the etcdctl.env of a host, then
    "reboots" h2 (etcd stopped, join re-run, etcd started again) and runs the join on h4, whose
    cluster is already full.

It prints one JSON line with everything it saw (the test asserts on it) and stops every
process it started, by pid.

    python -m tests.e2e.node_join_driver WORKDIR ETCD_BINARY MODE DISCOVERD USER_DATA
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from discoverd.directory.rules import cluster_label
from discoverd.store.embedded import EmbeddedEtcd, _die_with_parent, etcd_binary
from tests.support import DiscoverdProcess, wait_until

BRIDGE, BRIDGE_IP = "br0", "10.77.0.1"
SERVER = f"http://{BRIDGE_IP}:8087"
HOSTS = {f"h{n}": f"10.77.0.1{n}" for n in (1, 2, 3, 4)}
MEMBERS = ("h1", "h2", "h3")  # h4 comes last, to a full cluster
JOIN_CONF = "/etc/discoverd/join.conf"
JOIN_SCRIPT = "/usr/local/sbin/etcd-member-join"
UNIT = "/etc/systemd/system/etcd-member.service"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The hosts' files, bind-mounted from WORKDIR/nodes to where the unit's User= can reach them
# (pytest's tmp dirs are 0700 root); /run is this namespace's own tmpfs.
NODES = Path("/run/node-join")

JOIN_TIMEOUT = 60.0  # one run of the join script (srv mode waits for the other two)
HEALTHY_TIMEOUT = 45.0
SETTLE_TIMEOUT = 15.0  # a read right after /health says yes: the member may still catch up
COMMAND_TIMEOUT = 30.0  # a hard stop for one ip/etcdctl/discoverd command
STOP_TIMEOUT = 10.0
LOG_TAIL = 2500


class Refused(Exception):
    """The kernel or the tools refuse something the setup needs: the test skips, loudly."""


def run(
    command: list[str], timeout: float = COMMAND_TIMEOUT, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def must(command: list[str]) -> str:
    """A setup command that has to work; a refusal says which one and why."""
    done = run(command)
    if done.returncode != 0:
        raise Refused(f"`{shlex.join(command)}` failed: {done.stderr.strip()}")
    return done.stdout


# -- the namespaces ----------------------------------------------------------------------------


def private_run_and_etc(workdir: Path) -> None:
    """/run (for /run/netns) and /etc/netns (per-host resolv.conf) without writing to the real
    ones: a tmpfs over /run and an overlay over /etc whose upper layer is a tmpfs, both only in
    this mount namespace (`unshare --mount` made it private)."""
    must(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
    layer = workdir / "etc-layer"
    layer.mkdir()
    must(["mount", "-t", "tmpfs", "tmpfs", str(layer)])
    (layer / "upper").mkdir()
    (layer / "work").mkdir()
    options = f"lowerdir=/etc,upperdir={layer / 'upper'},workdir={layer / 'work'}"
    must(["mount", "-t", "overlay", "overlay", "-o", options, "/etc"])
    nodes = workdir / "nodes"
    nodes.mkdir(mode=0o755)
    nodes.chmod(0o755)
    NODES.mkdir()
    must(["mount", "--bind", str(nodes), str(NODES)])


def network() -> None:
    must(["ip", "link", "set", "lo", "up"])
    must(["ip", "link", "add", BRIDGE, "type", "bridge"])
    must(["ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE])
    must(["ip", "link", "set", BRIDGE, "up"])
    for host, ip in HOSTS.items():
        must(["ip", "netns", "add", host])
        must(
            ["ip", "link", "add", f"v{host}", "type", "veth", "peer", "name", "eth0", "netns", host]
        )
        must(["ip", "link", "set", f"v{host}", "master", BRIDGE, "up"])
        must(["ip", "-n", host, "addr", "add", f"{ip}/24", "dev", "eth0"])
        must(["ip", "-n", host, "link", "set", "eth0", "up"])
        must(["ip", "-n", host, "link", "set", "lo", "up"])
        etc = Path("/etc/netns") / host  # in the overlay: `ip netns exec` binds it over /etc
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {BRIDGE_IP}\noptions timeout:1 attempts:3\n")


def in_host(host: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", host, *command]


# -- the user-data -----------------------------------------------------------------------------


def render(user_data: Path, values: dict[str, str]) -> dict[str, Any]:
    """Substitute the __PLACEHOLDERS__ as an operator would, then read it as cloud-init does."""
    text = user_data.read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    data = yaml.safe_load(text)
    files = {entry["path"]: entry for entry in data["write_files"]}
    unit = files[UNIT]["content"]
    service = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    script = files[JOIN_SCRIPT]["content"]
    out_default = re.search(r'OUT="\$\{ETCD_MEMBER_DIR:-([^}]*)\}"', script)
    return {
        "first_line": text.splitlines()[0],
        # in what cloud-init reads (the comments name __PLACEHOLDERS__ too)
        "placeholders_left": sorted(set(re.findall(r"__[A-Z0-9_]+__", json.dumps(data)))),
        "conf": files[JOIN_CONF]["content"],
        "script": script,
        "script_mode": files[JOIN_SCRIPT].get("permissions"),
        "unit": unit,
        "exec_start": service.get("ExecStart", ""),
        "environment_file": service.get("EnvironmentFile", ""),
        "script_out_default": out_default.group(1) if out_default else None,
        "runcmd": [
            " ".join(map(str, step)) if isinstance(step, list) else step for step in data["runcmd"]
        ],
    }


def unit_user(unit: str) -> str | None:
    """The unit's User=, if that user exists on this machine (else etcd runs as root here)."""
    found = re.search(r"^User=(\S+)$", unit, re.MULTILINE)
    if not found:
        return None
    try:
        pwd.getpwnam(found.group(1))
    except KeyError:
        return None
    return found.group(1)


def read_env(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile: KEY=VALUE lines; blank lines and # or ; comments skipped."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def snapshot(directory: Path) -> dict[str, list[object]]:
    """Every file of a directory: content hash, mtime, mode and owner."""
    files: dict[str, list[object]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[str(path.relative_to(directory))] = [
                digest,
                info.st_mtime_ns,
                oct(info.st_mode),
                info.st_uid,
            ]
    return files


# -- the nodes ---------------------------------------------------------------------------------


class Node:
    """One host: the join script's files and directories, and the etcd it runs."""

    def __init__(
        self, host: str, rendered: dict[str, Any], discoverd: str, etcd: Path, user: str | None
    ) -> None:
        self.host = host
        self.ip = HOSTS[host]
        self.root = NODES / host
        self.root.mkdir(mode=0o755)
        self.conf = self.root / "join.conf"
        self.script = self.root / "etcd-member-join"
        self.out = self.root / "etcd-conf"
        self.data = self.root / "data"
        self.log_path = self.root / "etcd.log"
        self.discoverd = discoverd
        self.etcd = etcd
        self.user = user
        if user:  # as Debian's etcd-server package makes /var/lib/etcd: etcd's own, 0700
            account = pwd.getpwnam(user)
            self.data.mkdir(mode=0o700)
            os.chown(self.data, account.pw_uid, account.pw_gid)
        self.exec_start = shlex.split(rendered["exec_start"])
        self.conf.write_text(rendered["conf"])
        self.conf.chmod(0o600)
        self.script.write_text(rendered["script"])
        self.script.chmod(0o755)
        self.process: subprocess.Popen[bytes] | None = None

    def start_join(self) -> subprocess.Popen[str]:
        """The join script, as cloud-init's runcmd runs it, with the overrides it supports."""
        env = {
            "PATH": PATH,
            "JOIN_CONF": str(self.conf),
            "ETCD_MEMBER_NAME": self.host,
            "ETCD_MEMBER_IP": self.ip,
            "ETCD_MEMBER_DIR": str(self.out),
            "ETCD_DATA_DIR": str(self.data),
            "DISCOVERD": self.discoverd,
        }
        return subprocess.Popen(
            in_host(self.host, "sh", str(self.script)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a hung join is killed whole
        )

    def etcd_env(self) -> dict[str, str]:
        return read_env(self.out / "etcd.env")

    def etcdctl_env(self) -> dict[str, str]:
        return read_env(self.out / "etcdctl.env")

    def start_etcd(self) -> None:
        """The unit's ExecStart (with the etcd under test) and ONLY the env file's variables,
        as the unit's User= (setpriv does what systemd does for it: uid, gid, groups)."""
        assert self.process is None or self.process.poll() is not None, f"{self.host} etcd runs"
        pairs = [f"{key}={value}" for key, value in self.etcd_env().items()]
        as_user = []
        if self.user:  # a change of uid clears the parent-death signal: set it again
            as_user = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                       "--pdeathsig=KILL"]  # fmt: skip
        command = in_host(
            self.host, *as_user, "env", "-i", *pairs, str(self.etcd), *self.exec_start[1:]
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl; kept across both execs
            )  # fmt: skip

    def stop_etcd(self, sig: int = signal.SIGTERM) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def uid(self) -> int:
        """The real uid etcd runs as (ip, setpriv and env all exec: the pid is etcd's)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])

    def healthy(self) -> bool:
        """GET /health on its client URL with its own client certificate (etcdctl.env)."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"etcd on {self.host} exited with {code}: {self.log()[-1500:]}")
        env = self.etcdctl_env()
        context = ssl.create_default_context(cafile=env["ETCDCTL_CACERT"])
        context.load_cert_chain(env["ETCDCTL_CERT"], env["ETCDCTL_KEY"])
        try:
            url = env["ETCDCTL_ENDPOINTS"].split(",")[0] + "/health"
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def etcdctl(
        self, etcdctl: Path, *args: str, without: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """etcdctl in this host with ONLY its etcdctl.env (ETCDCTL_* written by the join),
        less the variable `without`."""
        env = self.etcdctl_env()
        pairs = [f"{key}={value}" for key, value in env.items() if key != without]
        return run(in_host(self.host, "env", "-i", *pairs, str(etcdctl), *args))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return "(no log)"


def join_all(nodes: list[Node]) -> dict[str, dict[str, object]]:
    """Run the join script on every node at once; each one's exit status and output."""
    started = [(node, node.start_join()) for node in nodes]
    deadline = time.monotonic() + JOIN_TIMEOUT
    results: dict[str, dict[str, object]] = {}
    for node, process in started:
        try:
            stdout, stderr = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group of the join we started
            stdout, stderr = process.communicate()
            stderr += f"\n(killed after {JOIN_TIMEOUT:.0f}s)"
        results[node.host] = {
            "rc": process.returncode,
            "stdout": stdout[-LOG_TAIL:],
            "stderr": stderr[-LOG_TAIL:],
        }
    return results


def wait_healthy(nodes: list[Node], what: str) -> float:
    started = time.monotonic()
    pending = list(nodes)

    def all_healthy() -> bool:
        pending[:] = [node for node in pending if not node.healthy()]
        return not pending

    wait_until(all_healthy, HEALTHY_TIMEOUT, what, interval=0.3)
    return round(time.monotonic() - started, 1)


def settled(
    read: Callable[[], dict[str, object]], good: Callable[[dict[str, object]], bool]
) -> dict[str, object]:
    """`read()` again (bounded) until its answer is `good`; the last answer either way, with the
    number of attempts it took."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    attempts = 0
    while True:
        attempts += 1
        answer = read()
        if good(answer) or time.monotonic() >= deadline:
            return answer | {"attempts": attempts}
        time.sleep(0.3)


def three(listing: dict[str, object]) -> bool:
    return listing.get("names") == list(MEMBERS)


def member_names(node: Node, etcdctl: Path) -> dict[str, object]:
    listed = node.etcdctl(etcdctl, "member", "list", "-w", "json")
    if listed.returncode != 0:
        return {"rc": listed.returncode, "stderr": listed.stderr[-LOG_TAIL:]}
    members = json.loads(listed.stdout).get("members", [])
    return {
        "rc": 0,
        "names": sorted(m.get("name", "") for m in members),
        "ids": sorted(format(m.get("ID", 0), "x") for m in members),
        "peer_urls": sorted(url for m in members for url in m.get("peerURLs", [])),
        "learners": [m.get("name", "") for m in members if m.get("isLearner")],
    }


def get_key(node: Node, etcdctl: Path, key: str, *flags: str) -> dict[str, object]:
    got = node.etcdctl(etcdctl, "get", key, "--print-value-only", *flags)
    return {"rc": got.returncode, "value": got.stdout.strip(), "stderr": got.stderr[-800:]}


def cluster_view(token: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{SERVER}/api/v1/clusters/{token}", timeout=10) as response:
        view: dict[str, Any] = json.loads(response.read())
    return {
        "members": sorted(m["name"] for m in view["members"]),
        "certificates": sorted(f"{c['name']}/{c['profile']}" for c in view["certificates"]),
        "srv": view["dns"]["srv"],
    }


# -- the run -----------------------------------------------------------------------------------


def main(
    workdir: Path, etcd: Path, mode: str, discoverd_bin: str, user_data: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False, "mode": mode, "etcd": str(etcd), "seconds": {}}
    seconds: dict[str, float] = result["seconds"]
    began = time.monotonic()

    def phase(name: str) -> Callable[[], None]:
        start = time.monotonic()
        return lambda: seconds.__setitem__(name, round(time.monotonic() - start, 1))

    try:
        private_run_and_etc(workdir)
        network()
    except (Refused, OSError) as exc:
        return {"ok": False, "refused": str(exc)}

    etcdctl = etcd.parent / "etcdctl"
    if not etcdctl.is_file():  # Debian's etcd-server has no etcdctl; a 3.5 client speaks to 3.4
        etcdctl = etcd_binary().parent / "etcdctl"
    backing = EmbeddedEtcd(workdir / "backing", name="backing")
    server = DiscoverdProcess(workdir, (), port=8087)
    server.args[server.args.index("--listen") + 1] = f"{BRIDGE_IP}:8087"
    server.args[server.args.index("--dns-listen") + 1] = f"{BRIDGE_IP}:53"
    server.args += ["--public-url", SERVER]
    server.url = SERVER
    nodes: dict[str, Node] = {}
    try:
        done = phase("discoverd")
        backing.start()
        server.args += ["--etcd", backing.endpoint]
        with server.log_path.open("ab") as log:  # DiscoverdProcess.start, dying with us
            server.process = subprocess.Popen(
                server.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl
            )  # fmt: skip
        wait_until(server.healthy, 30, f"discoverd on {SERVER} to be healthy")
        done()

        # 3. the operator: `discoverd new`
        new = run([discoverd_bin, "new", "--server", SERVER, "--size", "3"])
        url = re.search(r"^discovery URL:\s*(\S+)", new.stdout, re.MULTILINE)
        pin = re.search(r"^CA sha256:\s*(\S+)", new.stdout, re.MULTILINE)
        result["new"] = {
            "rc": new.returncode,
            "stdout": new.stdout[-LOG_TAIL:],
            "stderr": new.stderr[-LOG_TAIL:],
        }
        if new.returncode != 0 or not url or not pin:
            raise AssertionError("`discoverd new` printed no discovery URL or CA sha256")
        token = url.group(1).rsplit("/", 1)[1]
        result["new"] |= {"discovery_url": url.group(1), "ca_sha256": pin.group(1), "token": token}

        # 4. the user-data, rendered; the join on h1..h3 at once
        rendered = render(user_data, {
            "__DISCOVERD_SERVER__": SERVER, "__DISCOVERD_TOKEN__": token,
            "__DISCOVERD_CA_SHA256__": pin.group(1), "__DISCOVERD_MODE__": mode,
            "__DISCOVERD_PIP_SPEC__": "discoverd",
        })  # fmt: skip
        result["render"] = {
            k: v for k, v in rendered.items() if k not in ("script", "conf", "unit")
        }
        user = unit_user(rendered["unit"])
        result["etcd_user"] = user or "root"
        nodes = {host: Node(host, rendered, discoverd_bin, etcd, user) for host in HOSTS}
        members = [nodes[host] for host in MEMBERS]
        done = phase("join")
        result["joins"] = join_all(members)
        done()
        if any(j["rc"] != 0 for j in result["joins"].values()):
            raise AssertionError("a join script failed")
        result["etcd_env"] = {node.host: node.etcd_env() for node in members}
        result["etcdctl_env"] = {node.host: node.etcdctl_env() for node in members}
        result["out_files"] = {node.host: sorted(snapshot(node.out)) for node in members}
        domain = f"{cluster_label(token)}.etcd.internal"
        resolved = run(in_host("h1", "getent", "hosts", f"h2.{domain}"))
        result["resolved_h2_in_h1"] = resolved.stdout.split()[:1]

        # 5. the stock etcd, configured by its env file only
        done = phase("bootstrap")
        for node in members:
            node.start_etcd()
        result["bootstrap_healthy_after"] = wait_healthy(members, "h1..h3 healthy after the join")
        result["etcd_uids"] = sorted({node.uid() for node in members})
        done()

        # 6. what a client on h1 sees
        done = phase("etcdctl")
        h1, h2, h3 = members
        result["member_list"] = settled(lambda: member_names(h1, etcdctl), three)
        key, value = f"/node-join/{mode}", f"written by h1 in {mode} mode"

        def put() -> dict[str, object]:
            answer = h1.etcdctl(etcdctl, "put", key, value)
            out, err = answer.stdout.strip(), answer.stderr[-800:]
            return {"rc": answer.returncode, "stdout": out, "stderr": err}

        def has_value(answer: dict[str, object]) -> bool:
            return answer["value"] == value

        result["put"] = settled(put, lambda answer: answer["rc"] == 0)
        result["get_h1"] = settled(lambda: get_key(h1, etcdctl, key), has_value)
        result["get_h3"] = settled(lambda: get_key(h3, etcdctl, key), has_value)
        result["expected_value"] = value
        if mode == "srv":  # a client that finds the members through discoverd's SRV records
            srv = h1.etcdctl(
                etcdctl, "--discovery-srv", domain, "member", "list", "-w", "json",
                without="ETCDCTL_ENDPOINTS",
            )  # fmt: skip
            result["srv_member_list"] = {
                "rc": srv.returncode, "stderr": srv.stderr[-800:],
                "names": sorted(m.get("name", "") for m in json.loads(srv.stdout or "{}").get("members", [])),
            }  # fmt: skip
        result["cluster_before_reboot"] = cluster_view(token)
        done()

        # 7a. "reboot" h2: etcd stops, cloud-init's join runs again, etcd starts again
        done = phase("reboot")
        # h2 holds the key itself (a serializable read is answered from its own store)
        local = ("--consistency=s",)
        result["get_h2_before_reboot"] = settled(
            lambda: get_key(h2, etcdctl, key, *local), has_value
        )
        before = snapshot(h2.out)
        result["h2_stop_rc"] = h2.stop_etcd()
        rejoin = join_all([h2])["h2"]
        after = snapshot(h2.out)
        rejoin["changed"] = sorted(
            k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
        )
        result["rejoin"] = rejoin
        result["cluster_after_rejoin"] = cluster_view(token)
        h2.start_etcd()
        result["rejoin_healthy_after"] = wait_healthy(members, "h2 healthy again after its reboot")
        result["member_list_h2"] = settled(lambda: member_names(h2, etcdctl), three)
        result["get_h2_after_reboot"] = settled(lambda: get_key(h2, etcdctl, key), has_value)
        # from h2's own store, not through the leader: it came back with its data
        result["get_h2_local"] = settled(lambda: get_key(h2, etcdctl, key, *local), has_value)
        done()

        # 7b. a fourth node with the same user-data: the cluster is full
        done = phase("h4")
        result["h4"] = join_all([nodes["h4"]])["h4"]
        result["h4"]["wrote"] = (
            sorted(snapshot(nodes["h4"].out)) if nodes["h4"].out.exists() else []
        )
        result["cluster_after_h4"] = cluster_view(token)
        result["member_list_after_h4"] = settled(lambda: member_names(h1, etcdctl), three)
        done()
        result["ok"] = True
    except Exception as exc:  # report, then clean up: the test shows the logs
        result["error"] = f"{type(exc).__name__}: {exc}"[-6000:]
    finally:
        for node in nodes.values():
            node.stop_etcd(signal.SIGKILL)  # thrown away: no leadership hand-over to wait for
        server.stop()
        backing.stop()
        for host in HOSTS:
            run(["ip", "netns", "del", host])
    logs = {f"etcd-{host}": node.log() for host, node in nodes.items() if node.log_path.exists()}
    logs["discoverd"] = server.log()[-LOG_TAIL:]
    with contextlib.suppress(OSError):
        logs["backing"] = backing.log_path.read_text(errors="replace")[-LOG_TAIL:]
    result["logs"] = logs
    seconds["total"] = round(time.monotonic() - began, 1)
    return result


if __name__ == "__main__":
    workdir, etcd, mode, discoverd_bin, user_data = sys.argv[1:6]
    outcome = main(Path(workdir), Path(etcd), mode, discoverd_bin, Path(user_data))
    print(json.dumps(outcome))
    sys.exit(0 if outcome.get("ok") else 1)
