"""The opened CA keys each replica keeps in memory on a real etcd:
a CA replaced in etcd is what the next enrollment signs with, a sealed key that changed is
opened again (so one that no longer opens is refused, not served from memory), and neither the
key nor the sealed key is ever in a response."""

from __future__ import annotations

import base64

import pytest

from discoverd import appkeys
from discoverd.certs import pki
from discoverd.models import CaRecord
from discoverd.store import keys
from discoverd.store.enrollment import put
from tests.certs.test_handlers import csr, enroll, new_token, verify


async def replace_ca(client, token: str, record: CaRecord) -> None:
    """Store `record` as the cluster's CA (on the lease its CA key has), as an operator
    restoring or re-sealing it would, and wait until this replica's view shows it."""
    app = client.server.app
    gateway = app[appkeys.GATEWAY]
    _, kv = await gateway.get(keys.cluster_ca(token))
    assert kv is not None
    body = {"compare": [], "success": [put(keys.cluster_ca(token), record.model_dump_json(),
                                           kv.lease)], "failure": []}  # fmt: skip
    result = await gateway.txn(body)
    await app[appkeys.DIRECTORY].caught_up(int(result["header"]["revision"]))


async def stored_ca(client, token: str) -> CaRecord:
    _, kv = await client.server.app[appkeys.GATEWAY].get(keys.cluster_ca(token))
    assert kv is not None
    return CaRecord.model_validate_json(kv.value)


def sealed(key: pki.PrivateKey, service_key: bytes, token: str) -> str:
    return base64.b64encode(pki.seal(key, service_key, token)).decode()


async def test_a_replaced_ca_signs_the_next_enrollment(client, tmp_path):
    token = await new_token(client)
    first = await enroll(client, token, "infra0", csr(tmp_path, "infra0"))
    assert first.status == 200, await first.text()
    old_ca = (await first.json())["ca"]
    service_key = client.server.app[appkeys.AUTHORITY]._service_key
    key, cert = pki.new_ca("replacement CA")
    current = await stored_ca(client, token)
    await replace_ca(client, token, current.model_copy(update={
        "certificate": pki.pem(cert), "sealed_key": sealed(key, service_key, token)}))  # fmt: skip

    second = await enroll(client, token, "infra1", csr(tmp_path, "infra1"))
    assert second.status == 200, await second.text()
    body = await second.json()
    assert body["ca"] == pki.pem(cert) != old_ca
    assert verify(tmp_path, body["ca"], body["certificate"]).strip().endswith("OK")
    assert "OK" not in verify(tmp_path, old_ca, body["certificate"])
    served = await client.get(f"/api/v1/clusters/{token}/ca.pem")
    assert await served.text() == pki.pem(cert)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("resealed", 200),
        ("sealed-for-another-token", 503),
        ("damaged", 503),
        ("not-base64", 503),
    ],
)
async def test_a_changed_sealed_key_is_opened_again(client, tmp_path, change, status):
    token = await new_token(client)
    assert (await enroll(client, token, "infra0", csr(tmp_path, "infra0"))).status == 200
    authority = client.server.app[appkeys.AUTHORITY]
    current = await stored_ca(client, token)
    key = pki.unseal(base64.b64decode(current.sealed_key), authority._service_key, token)
    blob = {
        "resealed": sealed(key, authority._service_key, token),  # same key, new nonce
        "sealed-for-another-token": sealed(key, authority._service_key, "0" * 32),
        "damaged": current.sealed_key[:-8]
        + ("AAAAAAAA" if current.sealed_key[-8] != "A" else "BBBBBBBB"),
        "not-base64": "%" + current.sealed_key[1:],
    }[change]
    await replace_ca(client, token, current.model_copy(update={"sealed_key": blob}))

    response = await enroll(client, token, "infra1", csr(tmp_path, "infra1"))
    text = await response.text()
    assert response.status == status, text
    assert blob not in text and "PRIVATE KEY" not in text
    if status == 200:
        body = await response.json()
        assert verify(tmp_path, current.certificate, body["certificate"]).strip().endswith("OK")
