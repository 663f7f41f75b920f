"""Per-client token buckets for /new."""

from __future__ import annotations

import pytest

from discoverd.errors import RateLimited
from discoverd.ratelimit import RateLimiter, client_key, network_key


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


def test_many_addresses_of_one_network_share_an_hourly_cap():
    """#2: 60 loopback addresses each got a full bucket and filled etcd in seconds."""
    clock = Clock()
    limiter = RateLimiter(rate=100, burst=100, clock=clock, per_hour=50)
    for i in range(50):
        limiter.check(f"127.0.0.{i + 1}")
    with pytest.raises(RateLimited, match="from this network this hour") as caught:
        limiter.check("127.0.0.99")
    assert 60 < caught.value.retry_after <= 72  # one token per 72 s comes back
    limiter.check("127.0.1.1")  # another /24 has its own cap
    clock.now += 72
    limiter.check("127.0.0.7")
    with pytest.raises(RateLimited):
        limiter.check("127.0.0.8")


def test_a_refused_request_costs_no_token():
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=1, clock=clock, per_hour=2)
    limiter.check("10.0.0.1")
    with pytest.raises(RateLimited, match="from this address"):
        limiter.check("10.0.0.1")  # the rate limit refuses: the hourly cap is not charged
    limiter.check("10.0.0.2")
    with pytest.raises(RateLimited, match="this hour"):
        limiter.check("10.0.0.3")


@pytest.mark.parametrize(("rate", "per_hour"), [(0, 0), (0, 5), (5, 0)])
def test_each_limit_turns_off_alone(rate, per_hour):
    limiter = RateLimiter(rate=rate, burst=1000, clock=Clock(), per_hour=per_hour)
    allowed = 0
    for _ in range(1000):
        try:
            limiter.check("10.0.0.1")
        except RateLimited:
            break
        allowed += 1
    assert allowed == (per_hour or 1000)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.1", "10.0.0.0/24"),
        ("10.0.0.255", "10.0.0.0/24"),
        ("::ffff:10.0.1.1", "10.0.1.0/24"),
        ("2001:db8::1", "2001:db8::/64"),
        (None, "unknown"),
    ],
)
def test_network_key(address, key):
    assert network_key(address) == key


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
