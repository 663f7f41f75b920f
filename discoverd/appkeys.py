"""The `web.AppKey`s under which `build_app` stores the shared objects."""

from __future__ import annotations

from aiohttp import web

from discoverd.certs.authority import Authority
from discoverd.clusters.service import ClusterService
from discoverd.config import Settings
from discoverd.directory.service import Directory
from discoverd.dns.server import DnsServer
from discoverd.dns.wire import Responder
from discoverd.dns.zone import Zone
from discoverd.listener import Shutdown
from discoverd.metrics import Metrics
from discoverd.ratelimit import RateLimiter
from discoverd.store.gateway import EtcdGateway
from discoverd.store.registry import Registry

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
ENDPOINTS = web.AppKey[tuple[str, ...]]("etcd_endpoints")
GATEWAY = web.AppKey("gateway", EtcdGateway)
REGISTRY = web.AppKey("registry", Registry)
DIRECTORY = web.AppKey("directory", Directory)
NEW_LIMITER = web.AppKey("new_limiter", RateLimiter)
CLUSTERS = web.AppKey("clusters", ClusterService)
AUTHORITY = web.AppKey("authority", Authority)
DNS_RESPONDER = web.AppKey("dns_responder", Responder)
DNS_SERVER = web.AppKey("dns_server", DnsServer)
GRPC_PORT = web.AppKey("grpc_port", int)
SHUTDOWN = web.AppKey("shutdown", Shutdown)
ADMIN_TOKEN = web.AppKey("admin_token", str)
DNS_ZONE = web.AppKey("dns_zone", Zone)
