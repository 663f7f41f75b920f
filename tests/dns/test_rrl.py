"""The per-source response rate limit of UDP DNS: buckets, slips, networks, the table bound."""

from __future__ import annotations

import pytest

from discoverd import cli
from discoverd.dns.rrl import SourceLimiter, Verdict, source_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verdicts(limiter: SourceLimiter, address: str, count: int) -> list[Verdict]:
    return [limiter.check(address) for _ in range(count)]


def test_burst_then_slip_and_drop_in_turn_then_refill():
    clock = Clock()
    limiter = SourceLimiter(rate=5, clock=clock)
    assert verdicts(limiter, "192.0.2.1", 10) == [Verdict.ANSWER] * 10  # burst: 2 x rate
    over = verdicts(limiter, "192.0.2.1", 6)
    assert over == [Verdict.SLIP, Verdict.DROP] * 3  # every second one slips
    assert (limiter.slipped, limiter.dropped) == (3, 3)
    clock.now += 0.5  # two and a half tokens back
    assert verdicts(limiter, "192.0.2.1", 3) == [Verdict.ANSWER, Verdict.ANSWER, Verdict.SLIP]


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ("192.0.2.1", "192.0.2.200", True),  # one /24
        ("192.0.2.1", "192.0.3.1", False),
        ("2001:db8:0:ff::1", "2001:db8:0:1::2", True),  # one /56
        ("2001:db8:0:ff::1", "2001:db8:0:100::1", False),
        ("::ffff:192.0.2.9", "192.0.2.1", True),  # IPv4-mapped, from a dual-stack socket
        ("fe80::1%eth0", "fe80::2", True),
    ],
)
def test_sources_share_a_bucket_per_network(first, second, shared):
    assert (source_key(first) == source_key(second)) is shared
    limiter = SourceLimiter(rate=1, clock=Clock())
    verdicts(limiter, first, 2)
    assert (limiter.check(second) is Verdict.SLIP) is shared


def test_rate_zero_is_off():
    limiter = SourceLimiter(rate=0)
    assert set(verdicts(limiter, "192.0.2.1", 10_000)) == {Verdict.ANSWER}


def test_table_is_bounded():
    limiter = SourceLimiter(rate=1, clock=Clock(), max_sources=100)
    for i in range(1000):
        limiter.check(f"10.{i // 256}.{i % 256}.1")
    assert len(limiter._buckets) == 100


@pytest.mark.parametrize(
    ("argv", "env", "rate"),
    [
        ([], None, 100.0),  # the default
        (["--dns-rate", "0"], None, 0.0),
        ([], "25", 25.0),  # DISCOVERD_DNS_RATE
        (["--dns-rate", "7.5"], "25", 7.5),  # the flag wins
    ],
)
def test_dns_rate_setting(argv, env, rate, monkeypatch):
    if env is not None:
        monkeypatch.setenv("DISCOVERD_DNS_RATE", env)
    args = cli.parser().parse_args(["serve", *argv])
    assert cli.settings_from(args).dns_rate == rate


def test_a_negative_dns_rate_is_refused(capsys):
    assert cli.main(["serve", "--dns-rate", "-1"]) == 2
    assert "invalid dns_rate" in capsys.readouterr().err
