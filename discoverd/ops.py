"""Operational routes: `/health` for probes and load balancers, `/metrics` for Prometheus."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from discoverd import __version__, appkeys
from discoverd.errors import Unavailable
from discoverd.store.gateway import EtcdRejected

# What an alarm means for discoverd, for the reason /health gives.
_ALARMS = {
    "NOSPACE": "etcd is out of space (NOSPACE alarm): every write is refused until an operator "
    "compacts, defragments and disarms it (etcdctl alarm disarm)",
    "CORRUPT": "etcd found its data corrupt (CORRUPT alarm): writes are refused",
}


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", health, name="health")
    app.router.add_get("/metrics", metrics, name="metrics")
    app.router.add_get("/", index, name="index")


async def health(request: web.Request) -> web.Response:
    """200 when etcd answers, has no alarm raised (NOSPACE: writes are refused) and this
    replica's view is in step with it; 503 otherwise, with the reason (etcd down, an alarm, or
    what is wrong with TLS, credentials or permissions)."""
    registry = request.app[appkeys.REGISTRY]
    gateway = request.app[appkeys.GATEWAY]
    body: dict[str, Any] = {
        "version": __version__,
        "registry": {
            "synced": registry.synced,
            "revision": registry.revision,
            "clusters": len(registry),
        },
    }
    try:
        status = await gateway.status()
    except Unavailable as exc:
        body.update(status="unavailable", reason=exc.message)
        return web.json_response(body, status=503)
    except EtcdRejected as exc:
        body.update(status="unavailable", reason=f"etcd refused a status request: {exc.detail}")
        return web.json_response(body, status=503)
    alarms: list[str] | None = None
    try:
        alarms = await gateway.alarms()
    except Unavailable as exc:
        body.update(status="unavailable", reason=exc.message)
        return web.json_response(body, status=503)
    except EtcdRejected:  # an etcd user not allowed to list alarms: unknown, not raised
        pass
    body["etcd"] = {
        "version": status.get("version"),
        "revision": _revision(status),
        "alarms": alarms,
        "endpoint": gateway.preferred_endpoint,
    }
    if alarms is not None:
        request.app[appkeys.METRICS].etcd_alarms(alarms)
    if alarms:
        reasons = [_ALARMS.get(alarm, f"etcd raised the alarm {alarm}") for alarm in alarms]
        body.update(status="unavailable", reason="; ".join(reasons))
        return web.json_response(body, status=503)
    if not registry.synced:
        body.update(status="unavailable", reason=f"registry: {registry.unsynced_reason}")
        return web.json_response(body, status=503)
    body["status"] = "ok"
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[appkeys.METRICS]
    registry = request.app[appkeys.REGISTRY]
    m.clusters.set(len(registry))
    m.registry_synced.set(1 if registry.synced else 0)
    m.registry_revision.set(registry.revision)
    return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.Response:
    base = request.app[appkeys.SETTINGS].base_url
    return web.Response(
        text=f"discoverd {__version__}: etcd discovery service.\n"
        f"Create a token with: curl -X POST '{base}/new?size=3'\n"
        "then start each etcd member with --discovery <that URL>.\n"
    )


def _revision(status: dict[str, Any]) -> int:
    return int(status.get("header", {}).get("revision", 0))
