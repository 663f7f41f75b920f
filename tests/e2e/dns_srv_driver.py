"""Runs inside a private network namespace (`unshare --mount --net`), started by test_dns_srv.

It brings up `lo`, points /etc/resolv.conf (bind-mounted, private to this namespace) at
127.0.0.1, and starts: a backing etcd, `discoverd serve` with its DNS on 127.0.0.1:53, and three
real etcd members on 127.0.0.11-13 that bootstrap with `--discovery-srv` from records
registered through the member API. Then `etcdctl --discovery-srv` lists the members. It prints
one JSON line with what it saw, and stops every process it started, by pid.

    python -m tests.e2e.dns_srv_driver WORKDIR ETCD_BINARY [SRV_NAME]
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from discoverd.directory.rules import cluster_label
from discoverd.store.embedded import EmbeddedEtcd, _die_with_parent
from tests.support import DiscoverdProcess, wait_until

ZONE = "etcd.internal"
MEMBERS = [("infra0", "127.0.0.11"), ("infra1", "127.0.0.12"), ("infra2", "127.0.0.13")]


def main(workdir: Path, etcd_binary: Path, srv_name: str | None) -> dict[str, object]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
    subprocess.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)

    processes: list[subprocess.Popen[bytes]] = []
    backing = EmbeddedEtcd(workdir / "backing", name="backing")
    discoverd = DiscoverdProcess(workdir, (), port=8087)
    discoverd.args[discoverd.args.index("--dns-listen") + 1] = "127.0.0.1:53"
    result: dict[str, object] = {}
    try:
        backing.start()
        discoverd.args += ["--etcd", backing.endpoint, "--dns-zone", ZONE]
        discoverd.start()
        query = "size=3" + (f"&name={srv_name}" if srv_name else "")
        request = urllib.request.Request(f"{discoverd.url}/new?{query}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            token = response.read().decode().rsplit("/", 1)[1]
        domain = f"{srv_name}.{ZONE}" if srv_name else f"{cluster_label(token)}.{ZONE}"
        for name, ip in MEMBERS:
            body = json.dumps(
                {"peer_urls": [f"http://{ip}:2380"], "client_urls": [f"http://{ip}:2379"]}
            ).encode()
            put = urllib.request.Request(
                f"{discoverd.url}/api/v1/clusters/{token}/members/{name}", data=body, method="PUT"
            )
            with urllib.request.urlopen(put, timeout=10):
                pass

        started = time.monotonic()
        for name, ip in MEMBERS:
            command = [
                str(etcd_binary), "--name", name, "--data-dir", str(workdir / name),
                "--listen-peer-urls", f"http://{ip}:2380",
                "--initial-advertise-peer-urls", f"http://{ip}:2380",
                "--listen-client-urls", f"http://{ip}:2379",
                "--advertise-client-urls", f"http://{ip}:2379",
                "--discovery-srv", domain,
            ]  # fmt: skip
            if srv_name:
                command += ["--discovery-srv-name", srv_name]
            log = (workdir / f"{name}.log").open("ab")
            processes.append(
                subprocess.Popen(command, stdout=log, stderr=log, preexec_fn=_die_with_parent)  # noqa: PLW1509
            )

        etcdctl = etcd_binary.parent / "etcdctl"
        listing: list[str] = []

        def listed() -> bool:
            for process in processes:
                if process.poll() is not None:
                    raise AssertionError(f"an etcd member exited with {process.returncode}")
            command = [str(etcdctl), "--discovery-srv", domain, "member", "list", "-w", "json"]
            if srv_name:
                command[1:1] = ["--discovery-srv-name", srv_name]
            out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False,
                                 env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})  # fmt: skip
            if out.returncode != 0:
                return False
            members = json.loads(out.stdout).get("members", [])
            listing[:] = sorted(m.get("name", "") for m in members)
            # Until a member publishes itself, SRV bootstrap lists it under a placeholder name
            # ("0", "1", ...): wait for the real names, not for any three.
            return listing == sorted(name for name, _ in MEMBERS)

        wait_until(listed, 90, "3 members listed through etcdctl --discovery-srv", interval=0.5)
        result = {"ok": True, "members": listing, "seconds": round(time.monotonic() - started, 1)}
    except Exception as exc:  # report, then clean up: the test prints the logs
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in workdir.glob("*.log")}
        result = {"ok": False, "error": repr(exc), "logs": logs}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
                process.wait()
        discoverd.stop()
        backing.stop()
    return result


if __name__ == "__main__":
    outcome = main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    print(json.dumps(outcome))
    sys.exit(0 if outcome.get("ok") else 1)
