"""Prometheus metrics of one discoverd process (prometheus-client, one registry per app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class Metrics:
    """Every metric discoverd exports; the names are part of the operator-facing contract."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter(
            "discoverd_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "discoverd_http_request_duration_seconds",
            "HTTP request latency by route (long-poll waits included).",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 60),
            registry=r,
        )
        self.tokens_created = Counter(
            "discoverd_tokens_created_total", "Discovery tokens created.", registry=r
        )
        self.registrations = Counter(
            "discoverd_registrations_total",
            "Discovery registrations (v2 and v3) by result (created, duplicate).",
            ["result"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "discoverd_grpc_requests_total",
            "v3 discovery RPCs by method and gRPC status code.",
            ["method", "code"],
            registry=r,
        )
        self.waits_in_flight = Gauge(
            "discoverd_waits_in_flight", "v2 long-poll waits being held open.", registry=r
        )
        self.rate_limited = Counter(
            "discoverd_rate_limited_total", "Requests refused by the /new rate limit.", registry=r
        )
        self.etcd_errors = Counter(
            "discoverd_etcd_errors_total",
            "Failed calls to an etcd endpoint (each failover attempt counts).",
            registry=r,
        )
        self.certs_issued = Counter(
            "discoverd_certs_issued_total",
            "Certificates issued, by profile and how (enroll, renew).",
            ["profile", "how"],
            registry=r,
        )
        self.certs_denied = Counter(
            "discoverd_certs_denied_total",
            "Certificate requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.clusters = Gauge(
            "discoverd_clusters", "Clusters (live tokens) in this replica's view.", registry=r
        )
        self.registry_synced = Gauge(
            "discoverd_registry_synced", "1 when the view is in step with etcd.", registry=r
        )
        self.etcd_alarm = Gauge(
            "discoverd_etcd_alarm",
            "1 while the backing etcd has this alarm raised (NOSPACE: every write is refused), "
            "as /health last saw it.",
            ["alarm"],
            registry=r,
        )
        self._alarms_seen = {"NOSPACE"}
        self.etcd_alarm.labels("NOSPACE").set(0)
        self.registry_revision = Gauge(
            "discoverd_registry_revision", "etcd revision this replica's view reflects.", registry=r
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request (label children are cached: this is the hot path)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def etcd_alarms(self, alarms: list[str]) -> None:
        """Record the alarms etcd has raised now (every alarm seen before goes back to 0)."""
        self._alarms_seen.update(alarms)
        for alarm in self._alarms_seen:
            self.etcd_alarm.labels(alarm).set(1 if alarm in alarms else 0)

    def watch_dns(self, responder: DnsCounters, limiter: RateCounters, server: TcpCounters) -> None:
        """Export the DNS face's counters (kept as plain ints on its hot paths)."""
        self.registry.register(_DnsCollector(responder, limiter, server))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DnsCounters(Protocol):
    rcodes: dict[int, int]
    dropped: int


class RateCounters(Protocol):
    slipped: int
    dropped: int


class TcpCounters(Protocol):
    tcp_closed: dict[str, int]


_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class _DnsCollector(Collector):
    def __init__(self, responder: DnsCounters, limiter: RateCounters, server: TcpCounters) -> None:
        self._responder = responder
        self._limiter = limiter
        self._server = server

    def collect(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "discoverd_dns_responses", "DNS responses by rcode.", labels=["rcode"]
        )
        for rcode, count in sorted(self._responder.rcodes.items()):
            answers.add_metric([_RCODES.get(rcode, str(rcode))], count)
        yield answers
        yield CounterMetricFamily(
            "discoverd_dns_dropped",
            "DNS packets dropped unanswered.",
            value=self._responder.dropped,
        )
        limited = CounterMetricFamily(
            "discoverd_dns_rate_limited",
            "UDP DNS responses over the per-source rate (--dns-rate): sent truncated (slip) "
            "or dropped.",
            labels=["action"],
        )
        limited.add_metric(["slip"], self._limiter.slipped)
        limited.add_metric(["drop"], self._limiter.dropped)
        yield limited
        closed = CounterMetricFamily(
            "discoverd_dns_tcp_closed",
            "DNS TCP connections closed by the server, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(self._server.tcp_closed.items()):
            closed.add_metric([reason], count)
        yield closed
