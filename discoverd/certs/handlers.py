"""HTTP handlers of the certificate authority: parse -> authority -> render.

POST /api/v1/certs                       {"token","name","csr","profile"} -> {"certificate","ca"}
POST /api/v1/certs/renew                 {"token","certificate","csr"}    -> {"certificate","ca"}
GET  /api/v1/clusters/<token>/ca.pem     the cluster's CA certificate
GET  /api/v1/clusters/<token>/crl.pem    its CRL in PEM (what etcd 3.4 and 3.5 read)
GET  /api/v1/clusters/<token>/crl.der    the same CRL in DER (what etcd 3.6+ reads; 3.5 too)
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from discoverd import appkeys, jsonbody
from discoverd.certs.authority import Issued
from discoverd.directory import rules
from discoverd.errors import DiscoverdError, Invalid

PEM = "application/x-pem-file"


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(pattern=rules.TOKEN_RE.pattern)
    name: str = Field(min_length=1, max_length=64)
    csr: str = Field(min_length=1, max_length=16384)
    profile: str = "peer"


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(pattern=rules.TOKEN_RE.pattern)
    certificate: str = Field(min_length=1, max_length=16384)
    csr: str = Field(min_length=1, max_length=16384)


def setup_routes(app: web.Application, prefix: str) -> None:
    app.router.add_post(prefix + "/api/v1/certs", enroll, name="api-certs")
    app.router.add_post(prefix + "/api/v1/certs/renew", renew, name="api-certs-renew")
    app.router.add_get(prefix + "/api/v1/clusters/{token}/ca.pem", ca, name="api-ca")
    app.router.add_get(prefix + "/api/v1/clusters/{token}/crl.pem", crl, name="api-crl")
    app.router.add_get(prefix + "/api/v1/clusters/{token}/crl.der", crl_der, name="api-crl-der")


async def enroll(request: web.Request) -> web.Response:
    body = jsonbody.parse(
        await request.read(), EnrollRequest, '{"token", "name", "csr", "profile"}'
    )
    authority = request.app[appkeys.AUTHORITY]
    try:
        issued = await authority.enroll(body.token, body.name, body.csr, body.profile)
    except DiscoverdError as exc:
        request.app[appkeys.METRICS].certs_denied.labels(type(exc).__name__).inc()
        raise
    return _issued(request, issued)


async def renew(request: web.Request) -> web.Response:
    body = jsonbody.parse(await request.read(), RenewRequest, '{"token", "certificate", "csr"}')
    authority = request.app[appkeys.AUTHORITY]
    try:
        issued = await authority.renew(body.token, body.certificate, body.csr)
    except DiscoverdError as exc:
        request.app[appkeys.METRICS].certs_denied.labels(type(exc).__name__).inc()
        raise
    return _issued(request, issued, renewed=True)


async def ca(request: web.Request) -> web.Response:
    text = await request.app[appkeys.AUTHORITY].ca_pem(_token(request))
    return web.Response(text=text, content_type=PEM)


async def crl(request: web.Request) -> web.Response:
    text = await request.app[appkeys.AUTHORITY].crl_pem(_token(request))
    return web.Response(text=text, content_type=PEM)


async def crl_der(request: web.Request) -> web.Response:
    body = await request.app[appkeys.AUTHORITY].crl_der(_token(request))
    return web.Response(body=body, content_type="application/pkix-crl")


def _issued(request: web.Request, issued: Issued, renewed: bool = False) -> web.Response:
    labels = (issued.record.profile, "renew" if renewed else "enroll")
    request.app[appkeys.METRICS].certs_issued.labels(*labels).inc()
    return web.json_response(
        {
            "certificate": issued.certificate,
            "ca": issued.ca,
            "serial": issued.record.serial,
            "not_after": issued.record.not_after,
        }
    )


def _token(request: web.Request) -> str:
    token = request.match_info["token"]
    if not rules.TOKEN_RE.fullmatch(token):
        raise Invalid("a discovery token is 32 lowercase hex characters", cause=token[:64])
    return token
