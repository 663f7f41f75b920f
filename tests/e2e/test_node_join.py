"""Node bootstrap end to end: the shipped cloud-init user-data, the real `discoverd new` and
`discoverd join`, and the stock etcd configured by nothing but the env file the join wrote.
The join script fetches the one-file join client from discoverd, checks the sha256 `discoverd
new` printed and runs it with the system's python3 (no virtualenv); the client asks the etcd
for its version: 3.4 and 3.5 get the v2 discovery URL, 3.7 (which has no v2 discovery) v3
discovery through discoverd's gRPC face.

Everything runs in network namespaces this test makes (`unshare --mount --net`, then one
`ip netns` per host on a private bridge 10.77.0.0/24): see tests/e2e/node_join_driver.py. For
each mode (`--discovery` and `--discovery-srv`) and each stock etcd (3.5.1, and Debian's 3.4,
which is what the unit's /usr/bin/etcd is; 3.7.1 in discovery mode) three hosts join at once
and form a TLS cluster,
etcd running as the unit's User=etcd when that user exists; `etcdctl` on h1 with the
etcdctl.env of the join lists them and reads and writes; h2 "reboots" (its join re-run changes
nothing, its etcd comes back as the same member with its data); and a fourth host with the
same user-data is refused: the cluster is full.
"""

from __future__ import annotations

import hashlib
import json
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from discoverd.directory.rules import cluster_label
from tests.binaries import stock_etcd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
USER_DATA = REPO / "deploy/cloud-init/etcd-member.yaml"
DISCOVERD = Path(sys.executable).parent / "discoverd"
DRIVER_TIMEOUT = 240
MEMBERS = ["h1", "h2", "h3"]
V2_ETCD = ("3.4", "3.5")  # 3.4: Debian's, what the shipped unit's /usr/bin/etcd is


def namespaces_work() -> str | None:
    for tool in ("unshare", "ip", "getent"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"the kernel refuses network namespaces here: {probe.stderr.strip()}"
    return None


def shown(outcome: dict[str, Any]) -> str:
    """The outcome for an assertion message: the logs last, so that they are not cut off."""
    logs = outcome.get("logs", {})
    facts = {k: v for k, v in outcome.items() if k != "logs"}
    rendered = "\n".join(f"--- {name}:\n{text}" for name, text in logs.items())
    return json.dumps(facts, indent=1)[-12000:] + "\n" + rendered


@pytest.mark.parametrize(
    ("mode", "etcd"),
    [("discovery", "3.5"), ("discovery", "3.4"), ("discovery", "3.6"), ("discovery", "3.7"),
     ("srv", "3.5"), ("srv", "3.4"), ("srv", "3.7")],
)  # fmt: skip
def test_cloud_init_nodes_join_and_etcd_starts_from_its_env_file(tmp_path, mode, etcd):
    refused = namespaces_work()
    if refused:
        pytest.skip(f"LOUD: node bootstrap e2e ({mode}) not run: {refused}")
    binary = stock_etcd(etcd)
    assert DISCOVERD.is_file(), f"no discoverd console script next to {sys.executable}"
    command = ["unshare", "--mount", "--net", sys.executable, "-m", "tests.e2e.node_join_driver",
               str(tmp_path), str(binary), mode, str(DISCOVERD), str(USER_DATA)]  # fmt: skip
    run = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=DRIVER_TIMEOUT, check=False
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver printed nothing (exit {run.returncode}): {run.stderr[-3000:]}"
    outcome: dict[str, Any] = json.loads(lines[-1])
    if "refused" in outcome:
        pytest.skip(f"LOUD: node bootstrap e2e ({mode}) not run: {outcome['refused']}")
    print(f"{mode}, {etcd} as {outcome.get('etcd_user')}: seconds {outcome['seconds']}")
    why = shown(outcome)

    # the shipped user-data, rendered: nothing left to fill in, and it agrees with itself
    render = outcome.get("render", {})
    assert render.get("first_line") == "#cloud-config", why
    assert render.get("placeholders_left") == [], why
    assert render.get("exec_start") == "/usr/bin/etcd", why  # only the env file configures it
    assert render.get("environment_file") == f"{render.get('script_out_default')}/etcd.env", why
    assert "/usr/local/sbin/etcd-member-join" in render.get("runcmd", []), why

    # every host joined, and etcd came up from its env file alone
    assert outcome.get("error") is None, why
    # with the join client it fetched from discoverd, pinned by the sha256 `new` printed, run by
    # the system's python3: nothing installed from PyPI, no virtualenv
    shipped = hashlib.sha256((REPO / "discoverd/join.py").read_bytes()).hexdigest()
    assert outcome["new"]["join_sha256"] == shipped, why
    assert set(outcome["clients"].values()) == {shipped}, why
    assert outcome["python3"] and not outcome["python3"].startswith(sys.prefix), why
    for host in MEMBERS:
        join = outcome["joins"][host]
        assert join["rc"] == 0, why
        assert f"{host} joined" in join["stdout"], why
        env = outcome["etcd_env"][host]
        assert env["ETCD_NAME"] == host, why
        assert set(env) == {k for k in env if k.startswith("ETCD_")}, why
        assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true", why
        if mode == "discovery" and etcd in V2_ETCD:
            assert env["ETCD_DISCOVERY"] == outcome["new"]["discovery_url"], why
            assert "ETCD_DISCOVERY_SRV" not in env and "ETCD_DISCOVERY_TOKEN" not in env, why
        elif mode == "discovery":  # what `discoverd new` printed as the v3 flags
            flags = f"--discovery-token={env['ETCD_DISCOVERY_TOKEN']} " + (
                f"--discovery-endpoints={env['ETCD_DISCOVERY_ENDPOINTS']}"
            )
            assert flags == outcome["new"]["v3_flags"], why
            assert env["ETCD_DISCOVERY_ENDPOINTS"] == "10.77.0.1:8379", why
            assert "ETCD_DISCOVERY" not in env and "ETCD_DISCOVERY_SRV" not in env, why
        else:
            assert (
                env["ETCD_DISCOVERY_SRV"]
                == f"{cluster_label(outcome['new']['token'])}.etcd.internal"
            ), why
            assert "ETCD_DISCOVERY" not in env, why
        assert outcome["etcdctl_env"][host]["ETCDCTL_ENDPOINTS"].startswith("https://"), why
    # etcd ran as the unit's User= when that user exists (it reads the keys the join chowned)
    if outcome["etcd_user"] != "root":
        assert outcome["etcd_uids"] == [pwd.getpwnam(outcome["etcd_user"]).pw_uid], why
    # the host's resolv.conf points at discoverd's DNS, which names every member
    assert outcome["resolved_h2_in_h1"] == ["10.77.0.12"], why

    # etcdctl on h1, with the client certificate the join enrolled
    listing = outcome["member_list"]
    assert listing.get("names") == MEMBERS, why
    # with --discovery-srv, etcd names its peers by the SRV targets (which the peer certs carry)
    hosts = [f"10.77.0.1{n}" for n in (1, 2, 3)]
    if mode == "srv":
        domain = f"{cluster_label(outcome['new']['token'])}.etcd.internal"
        hosts = [f"{host}.{domain}" for host in MEMBERS]
    assert listing["peer_urls"] == [f"https://{host}:2380" for host in hosts], why
    assert listing["learners"] == [], why
    assert outcome["put"]["rc"] == 0 and outcome["put"]["stdout"] == "OK", why
    assert outcome["get_h1"]["value"] == outcome["expected_value"], why
    assert outcome["get_h3"]["value"] == outcome["expected_value"], why
    if mode == "srv":
        assert outcome["srv_member_list"]["names"] == MEMBERS, why
    assert outcome["cluster_before_reboot"]["members"] == MEMBERS, why

    # h2 "reboots": the join changes nothing, and its etcd rejoins with its data
    rejoin = outcome["rejoin"]
    assert rejoin["rc"] == 0, why
    assert "already joined" in rejoin["stdout"], why
    assert rejoin["changed"] == [], why
    assert outcome["cluster_after_rejoin"] == outcome["cluster_before_reboot"], why
    assert outcome["member_list_h2"].get("names") == MEMBERS, why
    assert outcome["member_list_h2"]["ids"] == listing["ids"], why  # the same member, not a new one
    assert outcome["get_h2_after_reboot"]["value"] == outcome["expected_value"], why
    assert outcome["get_h2_before_reboot"]["value"] == outcome["expected_value"], why
    assert outcome["get_h2_local"]["value"] == outcome["expected_value"], why

    # a join client that is not the pinned one is refused and never run
    bad_pin = outcome["h4_bad_pin"]
    assert bad_pin["rc"] != 0 and "refusing to run it" in bad_pin["stderr"], why
    assert not {"join.py", "join.py.new", "etcd-conf"} & set(bad_pin["left"]), why

    # a fourth host with the same user-data: refused, with a reason, and nothing registered
    h4 = outcome["h4"]
    assert h4["rc"] != 0, why
    assert "cluster is full" in h4["stderr"], why
    assert "etcd.env" not in h4["wrote"], why
    assert outcome["cluster_after_h4"] == outcome["cluster_before_reboot"], why
    assert outcome["member_list_after_h4"].get("names") == MEMBERS, why
