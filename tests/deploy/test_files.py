"""The shipped deploy files: valid for the tools that read them, and saying what we promise."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_cloud_init_user_data_is_valid():
    tool = shutil.which("cloud-init")
    if tool is None:
        pytest.skip(
            "LOUD: cloud-init (Debian package) is not installed; `make test` installs it as root"
        )
    out = subprocess.run([tool, "schema", "--config-file", str(DEPLOY / "cloud-init/etcd-member.yaml")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout


def test_user_data_installs_the_shipped_etcd_unit_and_join_script():
    data = yaml.safe_load((DEPLOY / "cloud-init/etcd-member.yaml").read_text())
    files = {entry["path"]: entry for entry in data["write_files"]}
    shipped = (DEPLOY / "systemd/etcd-member.service").read_text()
    assert files["/etc/systemd/system/etcd-member.service"]["content"] in shipped
    member = unit(files["/etc/systemd/system/etcd-member.service"]["content"])
    assert member["Service"]["EnvironmentFile"] == "/etc/etcd/discoverd/etcd.env"
    assert member["Service"]["ExecStart"] == "/usr/bin/etcd"  # only the env file configures it
    assert member["Service"]["User"] == "etcd"
    assert files["/etc/discoverd/join.conf"]["permissions"] == "0600"  # it holds the token
    script = files["/usr/local/sbin/etcd-member-join"]["content"]
    assert "--tls --ca-sha256" in script and "join \\" in script
    runcmd = [
        " ".join(map(str, step)) if isinstance(step, list) else step for step in data["runcmd"]
    ]
    assert runcmd.index("/usr/local/sbin/etcd-member-join") < runcmd.index(
        "systemctl enable --now etcd-member.service"
    )


def test_discoverd_unit_is_hardened():
    service = unit((DEPLOY / "systemd/discoverd.service").read_text())["Service"]
    assert service["ExecStart"].endswith("discoverd serve")
    for key, value in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "PrivateTmp": "yes", "UMask": "0077",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "KillMode": "mixed",
    }.items():  # fmt: skip
        assert service[key] == value, key


def test_compose_is_three_etcd_and_two_replicas_behind_one_address():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"etcd1", "etcd2", "etcd3", "discoverd-a", "discoverd-b", "front"} == set(services)
    replicas = [services["discoverd-a"], services["discoverd-b"]]
    for replica in replicas:
        env = replica["environment"]
        assert env["DISCOVERD_ETCD"] == "http://etcd1:2379,http://etcd2:2379,http://etcd3:2379"
        assert "DISCOVERD_SERVICE_KEY" in env  # one key, shared by every replica
    assert replicas[0]["environment"] == replicas[1]["environment"]  # one public URL for all
    assert services["front"]["ports"] == ["8087:8087", "53:53/udp", "53:53/tcp"]
    nginx = (DEPLOY / "compose/nginx.conf").read_text()
    assert (
        "discoverd-a:8087" in nginx
        and "discoverd-b:8053" in nginx
        and "proxy_buffering off" in nginx
    )


def test_kubernetes_manifests():
    docs = {
        doc["kind"]: doc
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes/discoverd.yaml").read_text())
    }
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "Secret"}
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] >= 2
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/"
    env = {item["name"]: item for item in container["env"]}
    assert (
        env["DISCOVERD_SERVICE_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        == docs["Secret"]["metadata"]["name"]
    )
    assert env["DISCOVERD_ETCD"]["value"].count("2379") == 3
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    labels = deployment["template"]["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert docs["Service"]["spec"]["selector"] == labels
    assert {p["protocol"] for p in docs["Service"]["spec"]["ports"]} == {"TCP", "UDP"}


def test_dockerfile_is_small_non_root_and_healthchecked():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim AS build" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/health" in text
    assert 'ENTRYPOINT ["discoverd"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_snippet_of_discoverd_new_fills_the_shipped_join_conf():
    import re

    from discoverd.clusters.commands import SNIPPET

    data = yaml.safe_load((DEPLOY / "cloud-init/etcd-member.yaml").read_text())
    conf = next(f for f in data["write_files"] if f["path"] == "/etc/discoverd/join.conf")
    shipped = re.findall(r"^(\w+)=", conf["content"], re.M)
    printed = re.findall(r"^\s*(\w+)=", SNIPPET, re.M)
    assert printed == shipped


@pytest.mark.parametrize(
    "path", ["compose.yaml", "kubernetes/discoverd.yaml", "systemd/discoverd.service"]
)
def test_the_deploy_files_set_only_variables_that_serve_reads(path):
    """Under their current names: a deprecated or misspelt DISCOVERD_* is silently ignored
    (or read with a warning) by `discoverd serve`."""
    import re

    from discoverd.config import Settings

    known = {"DISCOVERD_" + field.upper() for field in Settings.model_fields}
    used = set(re.findall(r"\bDISCOVERD_[A-Z0-9_]+", (DEPLOY / path).read_text()))
    assert used and used <= known, sorted(used - known)
