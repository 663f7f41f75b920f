"""The gateway against a real etcd secured as in production (TLS, client-certificate auth,
RBAC): it works with the right material, and each wrong piece is named in the error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from discoverd.errors import Unavailable
from discoverd.store.access import AccessRefused, EtcdAccess
from discoverd.store.gateway import EtcdGateway, b64
from tests.store.secure_etcd import (
    OUTSIDER,
    PASSWORD,
    PREFIX,
    USER,
    Pki,
    SecureCluster,
    secured_etcd,
)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    with secured_etcd(tmp_path_factory.mktemp("secure-etcd"), size=1) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"{PREFIX}test/{time.monotonic_ns()}/"


def gateway_for(cluster: SecureCluster, access: EtcdAccess) -> EtcdGateway:
    return EtcdGateway(cluster.endpoints, timeout=2, access=access)


def put(key: str, value: str) -> dict[str, object]:
    return {"compare": [], "success": [{"request_put": {"key": b64(key), "value": b64(value)}}]}


async def test_the_right_tls_material_and_user_read_write_and_lease(secure, prefix):
    gateway = gateway_for(secure, secure.pki.access())
    try:
        await gateway.txn(put(prefix + "a", "1"))
        revision, kv = await gateway.get(prefix + "a")
        assert kv is not None and kv.value == b"1" and revision >= kv.mod_revision
        _, kvs = await gateway.range_prefix(prefix)
        assert [kv.key for kv in kvs] == [prefix + "a"]
        assert await gateway.grant_lease(60) > 0
        assert (await gateway.status())["version"].startswith("3.5")
    finally:
        gateway.close()


def _no(pki: Pki, **changes: object) -> EtcdAccess:
    fields: dict[str, object] = {
        "cacert": pki.ca, "cert": pki.cert("client"), "key": pki.key("client"),
        "user": USER, "password": PASSWORD,
    }  # fmt: skip
    fields.update(changes)
    return EtcdAccess(**fields)  # type: ignore[arg-type]


# (id, access, the error class, words its reason must contain)
REFUSALS: list[tuple[str, Callable[[Pki], EtcdAccess], type[Unavailable], list[str]]] = [
    ("unknown-ca", lambda p: _no(p, cacert=p.other_ca), Unavailable,
     ["TLS", "certificate verify failed", "check --etcd-cacert"]),
    ("no-ca", lambda p: _no(p, cacert=None), Unavailable,
     ["certificate verify failed", "give --etcd-cacert"]),
    ("no-client-cert", lambda p: _no(p, cert=None, key=None), Unavailable,
     ["requires a client certificate", "--etcd-cert"]),
    ("untrusted-client-cert", lambda p: _no(p, cert=p.cert("rogue"), key=p.key("rogue")),
     Unavailable, ["rejected discoverd's client certificate", "--etcd-cert"]),
    ("client-cert-with-cn", lambda p: _no(p, cert=p.cert("client-cn"), key=p.key("client-cn")),
     AccessRefused, ["Common Name", "--etcd-cert"]),
    ("wrong-password", lambda p: _no(p, password="wrong"), AccessRefused,
     ["invalid user ID or password", f"etcd user '{USER}'", "--etcd-password"]),
    ("no-credentials", lambda p: _no(p, user=None, password=None), AccessRefused,
     ["authentication enabled", "--etcd-user"]),
    ("no-permission", lambda p: _no(p, user=OUTSIDER), AccessRefused,
     ["permission denied", f"etcd user '{OUTSIDER}'", "readwrite", "/discoverd/"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make_access", "error", "words"),
    [pytest.param(make, error, words, id=name) for name, make, error, words in REFUSALS],
)
async def test_each_misconfiguration_is_named(secure, make_access, error, words):
    gateway = gateway_for(secure, make_access(secure.pki))
    try:
        with pytest.raises(error) as caught:
            await gateway.range_prefix(PREFIX)  # what the registry feed reads first
    finally:
        gateway.close()
    for word in words:
        assert word in caught.value.message, caught.value.message
    assert PASSWORD not in caught.value.message and "wrong" not in caught.value.message


async def test_an_https_endpoint_given_as_http_is_named(secure):
    http_url = secure.endpoints[0].replace("https://", "http://")
    gateway = EtcdGateway([http_url], timeout=2, access=EtcdAccess(user=USER, password=PASSWORD))
    try:
        with pytest.raises(Unavailable, match="https:// endpoint given as http://"):
            await gateway.status()
    finally:
        gateway.close()


async def test_a_plain_etcd_given_as_https_is_named(etcd_endpoint):
    gateway = EtcdGateway([etcd_endpoint.replace("http://", "https://")], timeout=2)
    try:
        with pytest.raises(Unavailable, match="does not speak TLS"):  # either way the race goes
            await gateway.status()
    finally:
        gateway.close()


async def test_a_user_against_an_etcd_without_auth_still_works(etcd_endpoint, caplog):
    access = EtcdAccess(user=USER, password=PASSWORD)
    gateway = EtcdGateway([etcd_endpoint], timeout=2, access=access)
    try:
        with caplog.at_level(logging.WARNING, logger="discoverd.store.gateway"):
            await gateway.range_prefix("/discoverd-test/no-auth/")
            await gateway.range_prefix("/discoverd-test/no-auth/")
    finally:
        gateway.close()
    assert [r.message for r in caplog.records].count(
        "backing etcd has auth disabled: --etcd-user is not used"
    ) == 1


async def test_an_invalidated_token_is_renewed_once_for_all_threads(secure, prefix, caplog):
    """`etcdctl user passwd` invalidates the user's tokens at once (as an expiry or a member
    restart does): every call still succeeds, after one new authentication."""
    gateway = gateway_for(secure, secure.pki.access())
    try:
        with caplog.at_level(logging.INFO, logger="discoverd.store.gateway"):
            await gateway.txn(put(prefix + "before", "1"))
            secure.etcdctl("user", "passwd", USER, "--interactive=false", stdin=PASSWORD + "\n")
            results = await asyncio.gather(
                *(gateway.txn(put(f"{prefix}after-{i}", "1")) for i in range(8))
            )
            _, kvs = await gateway.range_prefix(prefix)
    finally:
        gateway.close()
    assert all(result.get("succeeded") for result in results)
    assert len(kvs) == 9
    logins = [r for r in caplog.records if r.message.startswith("authenticated to the backing")]
    assert len(logins) == 2, [r.message for r in caplog.records]


def test_the_watch_carries_the_token(secure, prefix):
    gateway = gateway_for(secure, secure.pki.access())
    stream = None
    try:
        revision, _ = gateway.range_prefix_sync(prefix)
        stream = gateway.open_watch(prefix, revision + 1)
        gateway.call_sync(lambda c: c.transaction(put(prefix + "watched", "1")))
        events = iter(stream)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: [next(events) for _ in range(2)]).result(timeout=10)
    finally:
        if stream is not None:
            stream.close()
        gateway.close()
    assert first[0].get("created") and not first[0].get("canceled"), first
    assert first[1]["events"][0]["kv"]["key"] == b64(prefix + "watched"), first


def test_a_watch_without_permission_is_refused(secure):
    gateway = gateway_for(secure, _no(secure.pki, user=OUTSIDER))
    stream = gateway.open_watch(PREFIX, 1)
    try:
        with ThreadPoolExecutor(1) as pool:
            outcome = pool.submit(lambda: next(iter(stream))).exception(timeout=10)
    finally:
        stream.close()
        gateway.close()
    assert isinstance(outcome, Unavailable), outcome
    assert "refused the watch" in outcome.message and "permission denied" in outcome.message


def test_a_lease_needs_no_permission(secure):
    """What the README says: granting a lease needs no role (only the keys put with it do)."""
    gateway = gateway_for(secure, _no(secure.pki, user=OUTSIDER))
    try:
        lease = gateway.call_sync(lambda c: c.lease(60).id)
    finally:
        gateway.close()
    assert lease > 0
