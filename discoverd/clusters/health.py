"""Whether etcd members answer: `GET <client-url>/health`, as `discoverd status` asks them.

A member is healthy when one of its client URLs answers `{"health": "true"}` within a short
timeout; a refused connection, a timeout, a TLS failure or etcd's own `"health": "false"` make it
unhealthy, with the reason. An https URL is asked only with the cluster's CA and a client
certificate (`--cert/--key`: members set up by `discoverd join --tls` require one); without
them the member is not checked, and says so, never guessed. Requests go straight to the member,
never through a proxy of the environment, and run in parallel: a slow member costs its timeout
once, however many there are.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

TIMEOUT = 2.0  # one /health request
MAX_PARALLEL = 16
NEEDS_CERT = "TLS: pass --cert/--key"


class State(Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNCHECKED = "not checked"


@dataclass(frozen=True, slots=True)
class Health:
    state: State
    reason: str = ""

    def __str__(self) -> str:
        if self.state is State.HEALTHY:
            return "healthy"
        if self.state is State.UNCHECKED:
            return f"not checked ({self.reason})"
        return f"unhealthy: {self.reason}"


def client_context(ca_pem: str | None, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS to members: the cluster CA as the only trust anchor, and the operator's client
    certificate. Raises ValueError with the files at fault. (No CA: to check the files early.)"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca_pem is not None:
            context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"the cluster CA is not a PEM certificate ({exc})") from None
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"--cert {cert} / --key {key}: not a PEM certificate and its key ({exc})"
        ) from None
    return context


def check_all(
    members: Mapping[str, Sequence[str]],
    tls: ssl.SSLContext | None,
    unchecked_tls: str = NEEDS_CERT,
    timeout: float = TIMEOUT,
) -> dict[str, Health]:
    """The health of each member (name -> client URLs), checked in parallel. `tls` is used for
    https URLs; without it those say `unchecked_tls`."""
    if not members:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(members))) as pool:
        found = {
            name: pool.submit(check, urls, tls, unchecked_tls, timeout)
            for name, urls in members.items()
        }
        return {name: future.result() for name, future in found.items()}


def check(
    urls: Sequence[str],
    tls: ssl.SSLContext | None,
    unchecked_tls: str = NEEDS_CERT,
    timeout: float = TIMEOUT,
) -> Health:
    """One member: healthy if any of its client URLs says so; else the first URL's problem."""
    if not urls:
        return Health(State.UNCHECKED, "no client URL registered")
    results = []
    for url in urls:
        if url.startswith("https:") and tls is None:
            results.append(Health(State.UNCHECKED, unchecked_tls))
            continue
        health = _ask(url, tls, timeout)
        if health.state is State.HEALTHY:
            return health
        results.append(health)
    unhealthy = [health for health in results if health.state is State.UNHEALTHY]
    return unhealthy[0] if unhealthy else results[0]


def _ask(url: str, tls: ssl.SSLContext | None, timeout: float) -> Health:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url.rstrip("/") + "/health", timeout=timeout) as response:
            return _answer(response.read(), response.status)
    except urllib.error.HTTPError as exc:  # etcd answers 503 with its reason
        return _answer(exc.read(), exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Health(State.UNHEALTHY, _transport(exc, timeout))


def _answer(body: bytes, status: int) -> Health:
    try:
        answer = json.loads(body)
        healthy, reason = answer.get("health"), str(answer.get("reason") or "")
    except (ValueError, AttributeError):
        return Health(State.UNHEALTHY, f"HTTP {status}, not etcd's /health answer")
    if healthy == "true" and status == 200:
        return Health(State.HEALTHY)
    said = f"etcd says health={healthy}" + (f": {reason}" if reason else "")
    return Health(State.UNHEALTHY, said)


def _transport(exc: BaseException, timeout: float) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer in {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS: {reason.verify_message} (not the cluster CA's certificate?)"
    if isinstance(reason, ssl.SSLError):
        return f"TLS: {reason.reason or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
