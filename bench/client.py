"""The v2 discovery calls the bench makes with aiohttp: new token, register, read the index,
and a scrape of the server's Prometheus metrics. Every call has a timeout and checks status."""

from __future__ import annotations

import re

import aiohttp

CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class BenchHTTPError(RuntimeError):
    """discoverd answered a setup call with an unexpected status."""


async def new_token(session: aiohttp.ClientSession, base: str, size: int) -> str:
    """POST /new?size=N; the token (last segment of the discovery URL it returns)."""
    async with session.post(f"{base}/new?size={size}", timeout=CALL_TIMEOUT) as response:
        body = await response.text()
        if response.status != 200:
            raise BenchHTTPError(f"POST /new -> {response.status}: {body[:200]}")
    return body.strip().rsplit("/", 1)[-1]


async def register(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    member_id: str,
    n: int,
    value: str | None = None,
) -> int:
    """A real v2 registration (create-only) of `value` (default `m<n>=http://127.0.0.<n>:2380`);
    the X-Etcd-Index it answers with."""
    url = f"{base}/{token}/{member_id}?prevExist=false"
    form = {"value": value or f"m{n}=http://127.0.0.{n}:2380"}
    async with session.put(url, data=form, timeout=CALL_TIMEOUT) as response:
        body = await response.text()
        if response.status != 201:
            raise BenchHTTPError(f"PUT /<token>/{member_id} -> {response.status}: {body[:200]}")
        return int(response.headers.get("X-Etcd-Index", "0"))


async def etcd_index(session: aiohttp.ClientSession, base: str, token: str) -> int:
    """X-Etcd-Index of GET /<token>: a wait from index + 1 sees only later registrations."""
    async with session.get(f"{base}/{token}", timeout=CALL_TIMEOUT) as response:
        await response.read()
        if response.status != 200:
            raise BenchHTTPError(f"GET /<token> -> {response.status}")
        return int(response.headers["X-Etcd-Index"])


async def metrics(
    session: aiohttp.ClientSession, base: str, limits: aiohttp.ClientTimeout = CALL_TIMEOUT
) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of GET /metrics as (name, labels, value)."""
    async with session.get(f"{base}/metrics", timeout=limits) as response:
        text = await response.text()
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric_value(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    """The sum of every sample called `name` (0 when absent)."""
    return sum(value for sample, _, value in samples if sample == name)


def status_counts(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, int]:
    """Requests served by "METHOD route status", from discoverd_http_requests_total."""
    counts: dict[str, int] = {}
    for name, labels, value in samples:
        if name == "discoverd_http_requests_total":
            key = f"{labels.get('method')} {labels.get('route')} {labels.get('status')}"
            counts[key] = counts.get(key, 0) + int(value)
    return counts
