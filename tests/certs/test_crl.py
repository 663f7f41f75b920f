"""A served CRL never expires (issue 9 #15): a CRL is signed again before its nextUpdate, even
when no revocation changes it, since etcd 3.6 refuses every connection on an expired CRL. Time
passes by the authority's clock (no sleeps); the CRLs are read by the real openssl."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from discoverd import appkeys
from discoverd.certs.authority import CRL_LIFETIME, CRL_REFRESH
from tests.certs.test_handlers import csr, enroll, new_token, openssl

DAY = 86400.0
FORMATS = [("crl.pem", "PEM"), ("crl.der", "DER")]


def read_crl(tmp_path, body: bytes, form: str) -> tuple[dt.datetime, dt.datetime, str]:
    """lastUpdate, nextUpdate and the text of a CRL, as openssl reads it."""
    path = tmp_path / f"crl.{form.lower()}"
    path.write_bytes(body)
    args = ["crl", "-inform", form, "-in", str(path), "-noout"]
    dates = openssl(*args, "-lastupdate", "-nextupdate")
    assert dates.returncode == 0, dates.stderr
    found = dict(line.split("=", 1) for line in dates.stdout.splitlines())
    last, next_ = (
        dt.datetime.strptime(found[k], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
        for k in ("lastUpdate", "nextUpdate")
    )
    return last, next_, openssl(*args, "-text").stdout


def crl_number(tmp_path, body: bytes, form: str) -> int:
    text = read_crl(tmp_path, body, form)[2]
    return int(text.split("X509v3 CRL Number:")[1].split()[0])


async def fetch(client, token: str, route: str) -> bytes:
    response = await client.get(f"/api/v1/clusters/{token}/{route}")
    assert response.status == 200, await response.text()
    return await response.read()


@pytest.mark.parametrize(("route", "form"), FORMATS)
async def test_a_quiet_cluster_is_served_a_fresh_crl_days_later(client, tmp_path, route, form):
    token = await new_token(client)
    issued = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    authority = client.server.app[appkeys.AUTHORITY]
    await authority.revoke(token, issued["serial"])
    start = time.time()
    authority.clock = lambda: start
    first = await fetch(client, token, route)
    assert await fetch(client, token, route) == first  # cached: not signed on every request

    for days in (1.0, 3.0, 8.0, 8.0 + 3.0, 30.0):
        now = start + days * DAY
        authority.clock = lambda now=now: now
        body = await fetch(client, token, route)
        last, next_, text = read_crl(tmp_path, body, form)
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        # nextUpdate always comfortably ahead: at least the lifetime less the refresh interval
        assert next_ - moment >= CRL_LIFETIME - CRL_REFRESH - dt.timedelta(seconds=1), days
        assert last <= moment
        assert f"Serial Number: {issued['serial'].upper()}" in text, days  # still revoked
    # Within the refresh interval the same CRL is served; past it, a newer one.
    authority.clock = lambda: start + 30 * DAY + CRL_REFRESH.total_seconds() / 2
    assert await fetch(client, token, route) == body
    authority.clock = lambda: start + 30 * DAY + CRL_REFRESH.total_seconds() + 1
    renewed = await fetch(client, token, route)
    assert renewed != body
    assert crl_number(tmp_path, renewed, form) > crl_number(tmp_path, body, form)


async def test_a_revocation_reaches_a_cached_crl_at_once(client, tmp_path):
    token = await new_token(client)
    issued = await (
        await enroll(client, token, "infra0", csr(tmp_path, "infra0", "IP:10.0.0.1"))
    ).json()
    empty = await fetch(client, token, "crl.pem")
    assert "No Revoked Certificates" in read_crl(tmp_path, empty, "PEM")[2]
    await client.server.app[appkeys.AUTHORITY].revoke(token, issued["serial"])
    text = read_crl(tmp_path, await fetch(client, token, "crl.pem"), "PEM")[2]
    assert f"Serial Number: {issued['serial'].upper()}" in text
