"""Per-client token buckets for /new."""

from __future__ import annotations

import pytest

from discoverd.errors import RateLimited
from discoverd.ratelimit import RateLimiter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_throttle_then_refill():
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        limiter.check("10.0.0.1")
    assert 0 < caught.value.retry_after <= 0.5
    limiter.check("10.0.0.2")  # another client has its own bucket
    clock.now += 0.5
    limiter.check("10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("10.0.0.1")


def test_rate_zero_is_off():
    limiter = RateLimiter(rate=0, burst=1)
    for _ in range(1000):
        limiter.check("10.0.0.1")


def test_table_is_bounded():
    limiter = RateLimiter(rate=1, burst=1, max_clients=10, clock=Clock())
    for i in range(100):
        limiter.check(f"10.0.1.{i}")
    assert len(limiter._buckets) == 10


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff", "2001:db8::/64"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        (None, "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_key(address, key):
    assert client_key(address) == key


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),  # a trusted proxy names the client
        ("198.51.100.7", "203.0.113.9", "198.51.100.7"),  # an untrusted peer cannot claim one
        ("10.0.0.5", "1.2.3.4, 203.0.113.9", "203.0.113.9"),  # the left part is the client's claim
        ("10.0.0.5", "203.0.113.9, 10.0.0.6", "203.0.113.9"),  # skip trusted hops from the right
        ("10.0.0.5", "10.0.0.6", "10.0.0.5"),  # only proxies: the peer
        ("10.0.0.5", "garbage", "garbage"),
    ],
)
def test_client_address_behind_trusted_proxies(peer, forwarded, client):
    from discoverd.ratelimit import client_address

    trusted = RateLimiter(1, 1, trusted_proxies=["10.0.0.0/8"]).trusted
    assert client_address(peer, forwarded, trusted) == client
