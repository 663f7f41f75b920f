"""etcd bootstraps with `--discovery-srv` from records discoverd serves, inside a private network
namespace the test makes, and `etcdctl --discovery-srv` finds the members."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.binaries import stock_etcd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def namespaces_work() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--net", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"the kernel refuses network namespaces here: {probe.stderr.strip()}"
    return None


@pytest.mark.parametrize("version", ["3.5", "3.6", "3.7"])
@pytest.mark.parametrize("srv_name", [None, "prod"], ids=["plain", "discovery-srv-name"])
def test_srv_bootstrap_in_a_network_namespace(tmp_path, srv_name, version):
    refused = namespaces_work()
    if refused:
        pytest.skip(f"LOUD: SRV bootstrap e2e not run: {refused}")
    command = ["unshare", "--mount", "--net", sys.executable, "-m", "tests.e2e.dns_srv_driver",
               str(tmp_path), str(stock_etcd(version))] + ([srv_name] if srv_name else [])  # fmt: skip
    run = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver printed nothing: {run.stderr[-3000:]}"
    outcome = json.loads(lines[-1])
    assert outcome["ok"], json.dumps(outcome, indent=1)[-6000:]
    assert outcome["members"] == ["infra0", "infra1", "infra2"]
