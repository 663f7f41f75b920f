"""Composition root: `build_app(settings)` wires every object and owns every resource.

Resources start in this order and stop in reverse (aiohttp `cleanup_ctx`):

    etcd      the embedded etcd process (only without --etcd), -> ENDPOINTS
              restarted if it dies; if it keeps dying: SHUTDOWN with status 1
    gateway   the etcd3gw facade, its thread pool, TLS/RBAC   -> GATEWAY
    registry  the in-memory view, its watch thread and probe  -> REGISTRY
    services  the directory, the cluster service, the CA    -> DIRECTORY, CLUSTERS, AUTHORITY
    grpc      the v3 discovery face (gRPC) on --grpc-listen   -> GRPC_PORT
    dns       the zone, fed by registry changes; UDP+TCP      -> DNS_ZONE, DNS_RESPONDER, DNS_SERVER

Long-poll waits are released on shutdown, so a stopping replica answers them with an empty 200
(etcd's client polls again) instead of holding the shutdown for --wait-timeout; v3 watch streams
are cut, and members re-create their watch on a replica (or on this one when it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from discoverd import appkeys, join_route, middlewares, ops
from discoverd.admin import auth as admin_auth
from discoverd.admin import handlers as admin_handlers
from discoverd.certs import handlers as cert_handlers
from discoverd.certs import servicekey
from discoverd.certs.authority import Authority
from discoverd.clusters import handlers as cluster_handlers
from discoverd.clusters.service import ClusterService
from discoverd.config import HostPort, Settings, specific_address
from discoverd.directory.service import Directory, Limits
from discoverd.discovery.v2 import handlers as v2_handlers
from discoverd.discovery.v3 import server as v3_server
from discoverd.discovery.v3.service import DiscoveryV3
from discoverd.dns.rrl import SourceLimiter
from discoverd.dns.server import DnsServer
from discoverd.dns.view import published
from discoverd.dns.wire import Responder
from discoverd.dns.zone import MAX_RECORDS, Zone
from discoverd.listener import Shutdown
from discoverd.logs import fingerprint
from discoverd.metrics import Metrics
from discoverd.ratelimit import RateLimiter
from discoverd.startup import StartupError
from discoverd.store.access import EtcdAccess
from discoverd.store.certificates import CertificateStore
from discoverd.store.clusters import ClusterStore
from discoverd.store.embedded import EmbeddedEtcd, EmbeddedEtcdError, supervise
from discoverd.store.feed import RegistryFeed
from discoverd.store.gateway import EtcdGateway
from discoverd.store.registry import Registry

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
FIRST_SYNC_WAIT = 10.0


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[middlewares.observe], client_max_size=MAX_BODY)
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.SHUTDOWN] = Shutdown()
    app[appkeys.REGISTRY] = Registry()
    app[appkeys.NEW_LIMITER] = RateLimiter(
        settings.new_rate,
        settings.new_burst,
        trusted_proxies=settings.trusted_proxy,
        per_hour=settings.new_per_hour,
    )
    app.cleanup_ctx.extend([etcd_ctx, gateway_ctx, registry_ctx, services_ctx, grpc_ctx, dns_ctx])
    app.on_shutdown.append(_release_waits)
    if settings.admin_token_file is not None:
        app[appkeys.ADMIN_TOKEN] = admin_auth.load_token(settings.admin_token_file)
    ops.setup_routes(app)
    admin_handlers.setup_routes(app, settings.route_prefix)  # before the token routes
    cluster_handlers.setup_routes(app, settings.route_prefix)
    cert_handlers.setup_routes(app, settings.route_prefix)
    join_route.setup_routes(app, settings.route_prefix)
    v2_handlers.setup_routes(app, settings.route_prefix)
    return app


async def etcd_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    if settings.etcd:
        app[appkeys.ENDPOINTS] = settings.etcd
        yield
        return
    etcd = EmbeddedEtcd(settings.data_dir, settings.etcd_binary)
    etcd.launch()  # on the loop thread, which lives as long as the process (see launch())
    endpoint = await asyncio.to_thread(etcd.wait_ready)
    app[appkeys.ENDPOINTS] = (endpoint,)
    supervisor = asyncio.create_task(supervise(etcd), name="etcd-supervisor")
    supervisor.add_done_callback(lambda task: _supervisor_done(app, task))
    try:
        yield
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError, EmbeddedEtcdError):
            await supervisor
        await asyncio.to_thread(etcd.stop)


def _supervisor_done(app: web.Application, task: asyncio.Task[None]) -> None:
    """The embedded etcd keeps dying: stop discoverd with status 1, so that whatever runs it
    (systemd, Kubernetes) restarts the whole service."""
    if task.cancelled() or task.exception() is None:
        return
    reason = str(task.exception())
    logger.critical("%s; stopping discoverd", reason)
    app[appkeys.SHUTDOWN].request(1, reason)


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    endpoints: tuple[str, ...] = app[appkeys.ENDPOINTS]
    settings = app[appkeys.SETTINGS]
    access = EtcdAccess(
        cacert=settings.etcd_cacert,
        cert=settings.etcd_cert,
        key=settings.etcd_key,
        user=settings.etcd_user,
        password=settings.etcd_secret,
    )
    gateway = EtcdGateway(endpoints, settings.etcd_timeout, access=access)
    gateway.on_failure = app[appkeys.METRICS].etcd_errors.inc
    app[appkeys.GATEWAY] = gateway
    try:
        yield
    finally:
        gateway.close()


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = app[appkeys.REGISTRY]
    feed = RegistryFeed(app[appkeys.GATEWAY], registry, asyncio.get_running_loop())
    feed.start()
    probe = asyncio.create_task(feed.probe_forever(), name="etcd-probe")
    # Serve once the first full read is in, or after FIRST_SYNC_WAIT anyway: with etcd down
    # every route answers 503 until it returns, rather than refusing connections.
    try:
        await asyncio.wait_for(registry.wait_revision(1), FIRST_SYNC_WAIT)
    except TimeoutError:
        logger.warning("etcd not reachable yet; serving 503 until it is")
    try:
        yield
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        await asyncio.to_thread(feed.stop)


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    metrics = app[appkeys.METRICS]
    service = Directory(
        app[appkeys.REGISTRY],
        ClusterStore(app[appkeys.GATEWAY]),
        Limits(
            settings.default_size,
            settings.max_size,
            settings.token_ttl,
            settings.retry_window,
            max_tokens=settings.max_tokens,
        ),
        on_register=lambda result: metrics.registrations.labels(result).inc(),
    )
    app[appkeys.DIRECTORY] = service
    gateway = app[appkeys.GATEWAY]
    authority = Authority(
        service,
        CertificateStore(gateway),
        _service_key(settings),
        settings.dns_zone,
        settings.cert_ttl,
    )
    app[appkeys.AUTHORITY] = authority
    app[appkeys.CLUSTERS] = ClusterService(
        service,
        ClusterStore(gateway),
        settings.dns_zone,
        settings.token_ttl,
        settings.base_url,
        v3_endpoints=settings.v3_endpoints,
        v3_tls=settings.grpc_tls,
    )
    try:
        yield
    finally:
        await authority.close()
        await service.close()


async def grpc_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    count = app[appkeys.METRICS].grpc_requests
    service = DiscoveryV3(
        app[appkeys.DIRECTORY], lambda method, code: count.labels(method, code).inc()
    )
    credentials = None
    if settings.grpc_cert is not None and settings.grpc_key is not None:
        credentials = await asyncio.to_thread(
            v3_server.tls_credentials, settings.grpc_cert, settings.grpc_key
        )
    listen = settings.grpc_listen
    server, port = await v3_server.start(service, listen.host, listen.port, credentials)
    app[appkeys.GRPC_PORT] = port
    tls = "TLS" if credentials is not None else "plaintext"
    logger.info("v3 discovery (gRPC, %s) on %s", tls, HostPort(host=listen.host, port=port))
    try:
        yield
    finally:
        await server.stop(grace=1.0)


async def dns_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    registry = app[appkeys.REGISTRY]
    ns_address = specific_address(settings.dns_listen.host)
    zone = Zone(settings.dns_zone, [ns_address] if ns_address else [])
    # Until the view has read etcd (and while it is stale), answer SERVFAIL, never NXDOMAIN.
    responder = Responder(zone.lookup, ready=lambda: registry.synced)
    limiter = SourceLimiter(settings.dns_rate)

    def follow(tokens: frozenset[str]) -> None:
        """One registry change: O(records of the changed clusters), nothing else is touched."""
        changed: set[bytes] = set()
        for token in tokens:
            cluster = registry.cluster(token)
            try:
                changed |= zone.set_cluster(
                    token, published(cluster) if cluster else None, registry.revision
                )
            except Exception:  # one unpublishable cluster must not stop the others
                logger.exception("cluster %s… left out of DNS", fingerprint(token))
                changed |= zone.set_cluster(token, None, registry.revision)
            domain = zone.domain(token)
            if domain is not None and domain.omitted:
                logger.warning(
                    "cluster %s…: %d members left out of DNS (over %d records)",
                    fingerprint(token), domain.omitted, MAX_RECORDS,
                )  # fmt: skip
        if changed:
            responder.invalidate(changed)

    follow(registry.tokens())
    registry.add_listener(follow)
    server = DnsServer(responder, settings.dns_listen.host, settings.dns_listen.port, limiter)
    app[appkeys.METRICS].watch_dns(responder, limiter, server)
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        raise StartupError(
            f"cannot listen for DNS on {settings.dns_listen} (udp+tcp): {exc.strerror or exc}"
        ) from None
    logger.info("DNS for %s on %s (udp+tcp)", settings.dns_zone, server.address)
    app[appkeys.DNS_RESPONDER] = responder
    app[appkeys.DNS_SERVER] = server
    app[appkeys.DNS_ZONE] = zone
    try:
        yield
    finally:
        await server.stop()


def _service_key(settings: Settings) -> bytes:
    if settings.service_key is not None:
        return servicekey.decode(settings.service_key.get_secret_value())
    # Only the default location is created: a key file named on the command line that is
    # missing is a mistake (another replica's key was not mounted), not a reason for a new key.
    create = settings.service_key_file is None
    return servicekey.load_or_create(settings.service_key_path, create=create)


async def _release_waits(app: web.Application) -> None:
    app[appkeys.REGISTRY].release_all()
