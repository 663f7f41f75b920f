"""Response rate limiting for DNS over UDP (RRL, as in BIND): a token bucket per source network,
so that the responder cannot be used to reflect and amplify traffic at a spoofed address.

Sources are grouped by /24 (IPv4) and /56 (IPv6). A network gets `rate` responses a second, in
bursts of up to `2 * rate`. Past that its responses slip: every second one goes out as a TC=1
reply that holds only the question (never larger than the query: nothing is amplified, and a
real client retries over TCP, which cannot be spoofed), the others are dropped. TCP is not rate
limited (its handshake proves the source; the server caps its connections instead). The table
is bounded: the least recently seen network is forgotten first. Rate 0 turns it off.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_SOURCES = 65_536
SLIP = 2  # one limited response in SLIP is sent truncated, the others are dropped


class Verdict(enum.Enum):
    ANSWER = "answer"
    SLIP = "slip"
    DROP = "drop"


class SourceLimiter:
    """`rate` UDP responses a second per source network; `slipped`, `dropped` count the rest."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.rate = rate
        self.burst = 2.0 * rate
        self.slipped = 0
        self.dropped = 0
        self._clock = clock
        self._max_sources = max_sources
        # network -> [tokens, time of the last refill, responses limited so far]
        self._buckets: OrderedDict[str | bytes, list[float]] = OrderedDict()

    def check(self, address: str) -> Verdict:
        """Take one response's token for `address`."""
        if self.rate <= 0:
            return Verdict.ANSWER
        key = source_key(address)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now, 0]
            if len(self._buckets) > self._max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return Verdict.ANSWER
        bucket[2] += 1
        if bucket[2] % SLIP == 1:
            self.slipped += 1
            return Verdict.SLIP
        self.dropped += 1
        return Verdict.DROP


def source_key(address: str) -> str | bytes:
    """The network a source address is limited as: its /24 (IPv4) or /56 (IPv6)."""
    if ":" not in address:
        return address.rpartition(".")[0]
    if "." in address:  # an IPv4-mapped IPv6 address (a dual-stack socket): ::ffff:192.0.2.1
        return address.rpartition(":")[2].rpartition(".")[0]
    try:
        return ipaddress.IPv6Address(address.partition("%")[0]).packed[:7]
    except ValueError:
        return address
