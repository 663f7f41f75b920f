"""The wire format of enrollment in etcd: the transaction that enrolls a batch of names (of one
cluster or several), and the per-profile count that caps them. Keys come from `store.keys`;
`store.certificates` runs it.

A name is enrolled for a profile by creating `enrolled/<profile>/<name>` (create-only) with its
certificate record. `enrolled-count/<profile>` holds how many such keys exist, as a decimal
number; every transaction that creates or deletes a name compares it (value, or absence) and
sets it, so replicas enrolling at the same moment can never take more than the limit between
them, and a write costs the same with 3 names as with 999.

A cluster enrolled by a version that kept a `roster/<profile>` JSON list has no count key. Its
names are then counted (`count_only`) at a revision R, and the transaction that creates the
count compares that it is still absent and that no name changed after R; it also deletes the
roster. The roster itself is never read: the `enrolled/` keys it mirrored are the truth.

The first enrollment of a cluster moves it (config, CA, name reservation) from its token's
lease to one as long as its CA, in the same transaction (`Hold`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from discoverd.models import CaRecord, CertRecord, ClusterConfig
from discoverd.store import keys
from discoverd.store.clusters import config_json
from discoverd.store.gateway import b64, decode_kv, prefix_end

MAX_OPS = 128  # operations per list of a transaction: etcd's --max-txn-ops default


class EnrollRefusal(Enum):
    CLAIMED = "claimed"  # the name holds a certificate of this profile already
    FULL = "full"  # the profile has its `limit` names
    MOVED = "moved"  # the cluster left the lease the enrollment expected (another one held it)
    GONE = "gone"  # the cluster's token expired


Outcome = int | EnrollRefusal  # the revision that recorded it, or why not
Slot = tuple[str, str]  # (token, profile): what one count counts


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A name to enroll in a cluster: its certificate, and how many names its profile may hold."""

    token: str
    record: CertRecord
    limit: int

    @property
    def slot(self) -> Slot:
        return self.token, self.record.profile

    @property
    def claim(self) -> str:
        return keys.enrolled(self.token, self.record.profile, self.record.name)


def absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}


def put(key: str, value: str, lease: int) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}


def _exists(token: str) -> dict[str, Any]:
    key = keys.cluster_config(token)
    return {"key": b64(key), "result": "GREATER", "target": "CREATE", "create_revision": 0}


def ops_bound(entries: int, slots: int, tokens: int, holds: int) -> int:
    """The most operations any list of an enrollment transaction has, for `entries` names in
    `slots` (token, profile) pairs of `tokens` clusters, `holds` of them moved by a `Hold`."""
    return max(2 * entries + 2 * slots + 3 * holds, entries + 2 * slots + tokens + holds)


@dataclass(frozen=True, slots=True)
class Hold:
    """Move a cluster from its token's lease (`from_lease`) to its CA's (`lease`): the config,
    the CA and the name reservation, in the enrollment's transaction."""

    config: ClusterConfig
    ca: CaRecord
    from_lease: int
    lease: int
    with_name: bool = True  # False when the name is no longer this cluster's (older data)

    def compare(self, token: str) -> list[dict[str, Any]]:
        config = {"key": b64(keys.cluster_config(token)), "result": "EQUAL", "target": "LEASE",
                  "lease": self.from_lease}  # fmt: skip
        if not self.name:
            return [config]
        name = {"key": b64(keys.cluster_name(self.name)), "result": "EQUAL", "target": "VALUE",
                "value": b64(token)}  # fmt: skip
        return [config, name]

    def puts(self, token: str) -> list[dict[str, Any]]:
        held = self.config.model_copy(update={"held_by_ca": True})
        puts = [
            put(keys.cluster_config(token), config_json(held), self.lease),
            put(keys.cluster_ca(token), self.ca.model_dump_json(), self.lease),
        ]
        if self.name:
            puts.append(put(keys.cluster_name(self.name), token, self.lease))
        return puts

    @property
    def name(self) -> str | None:
        return self.config.name if self.with_name else None


Place = int | Hold  # where a cluster's records go: its lease, or the move to its CA's lease


def lease_of(place: Place) -> int:
    return place.lease if isinstance(place, Hold) else place


@dataclass(frozen=True, slots=True)
class Count:
    """A profile's enrollment count as last seen: `value` names, and `stored`, the count key's
    value (None: there is no count key, and `value` names were counted at `revision`; 0 and
    0 for a cluster believed to have none)."""

    value: int = 0
    stored: str | None = None
    revision: int = 0
    fresh: bool = False  # read from etcd just now: enough to refuse an enrollment on

    @classmethod
    def written(cls, value: int) -> Count:
        """The count that `puts` stored."""
        value = max(0, value)
        return cls(value, str(value))

    @classmethod
    def read(cls, key: dict[str, Any], names: dict[str, Any], revision: int) -> Count:
        """From the responses of `reads`, at `revision`. The names are what is counted, either
        way: a count key that drifted from them heals on its next change."""
        kvs = key.get("kvs", [])
        stored = decode_kv(kvs[0]).value.decode(errors="replace") if kvs else None
        return cls(int(names.get("count", 0)), stored, revision, fresh=True)

    def compare(self, token: str, profile: str) -> list[dict[str, Any]]:
        """Compares that hold while the profile still has `value` names."""
        key = keys.enrolled_count(token, profile)
        if self.stored is not None:
            return [{"key": b64(key), "result": "EQUAL", "target": "VALUE",
                     "value": b64(self.stored)}]  # fmt: skip
        # No count key: every writer of a name creates one, so while there is none, the names
        # counted at `revision` are still the names if none was written since.
        names = keys.enrolled_names(token, profile)
        unchanged = {"key": b64(names), "range_end": b64(prefix_end(names)), "result": "LESS",
                     "target": "MOD", "mod_revision": self.revision + 1}  # fmt: skip
        return [absent(key), unchanged]

    def puts(self, token: str, profile: str, change: int, lease: int) -> list[dict[str, Any]]:
        """Store `value + change`; the first count of a cluster also drops an older roster."""
        value = max(0, self.value + change)
        count = put(keys.enrolled_count(token, profile), str(value), lease)
        if self.stored is not None:
            return [count]
        return [count, {"request_delete_range": {"key": b64(keys.roster(token, profile))}}]

    @staticmethod
    def reads(token: str, profile: str) -> list[dict[str, Any]]:
        """Reads for `Count.read`: the count key, and how many names there are."""
        names = keys.enrolled_names(token, profile)
        return [
            {"request_range": {"key": b64(keys.enrolled_count(token, profile))}},
            {"request_range": {"key": b64(names), "range_end": b64(prefix_end(names)),
                               "count_only": True}},
        ]  # fmt: skip


@dataclass(slots=True)
class Failure:
    """What the reads of a failed attempt say."""

    counts: dict[Slot, Count] = field(default_factory=dict)
    claimed: list[int] = field(default_factory=list)  # entries whose name is taken
    gone: set[str] = field(default_factory=set)  # tokens whose config is gone
    moved: set[str] = field(default_factory=set)  # tokens that left their Hold's lease
    unnamed: set[str] = field(default_factory=set)  # tokens whose name went with the old lease


@dataclass(frozen=True, slots=True)
class Attempt:
    """One transaction of a batch: the entries that fit their profile's count (`admitted`,
    indices into the batch, in order) and those that do not (`over`), judged by `counts`. It
    succeeds only if those counts still hold, none of the names is claimed and every cluster
    still exists (so no put names a lease that is gone, which would fail the whole batch): its
    `over` are FULL then (a name that holds a certificate is CLAIMED, whether or not its
    profile is full). `places`: where each cluster's records go."""

    entries: Sequence[Enrollment]
    counts: Mapping[Slot, Count]
    places: Mapping[str, Place]
    admitted: tuple[int, ...]
    over: tuple[int, ...]

    @classmethod
    def plan(
        cls,
        entries: Sequence[Enrollment],
        undecided: Sequence[int],
        counts: Mapping[Slot, Count],
        places: Mapping[str, Place],
    ) -> Attempt:
        admitted: list[int] = []
        over: list[int] = []
        added: Counter[Slot] = Counter()
        for i in undecided:
            slot = entries[i].slot
            if counts[slot].value + added[slot] < entries[i].limit:
                added[slot] += 1
                admitted.append(i)
            else:
                over.append(i)
        return cls(entries, counts, places, tuple(admitted), tuple(over))

    @property
    def needed(self) -> bool:
        """Whether a transaction must run: names to claim, or refusals to confirm (a fresh
        count comes from a failed attempt, which read the claims of every undecided name)."""
        fresh = all(self.counts[self.entries[i].slot].fresh for i in self.over)
        return bool(self.admitted) or not fresh

    @property
    def names(self) -> tuple[int, ...]:
        return (*self.admitted, *self.over)

    @property
    def slots(self) -> list[Slot]:
        return sorted({self.entries[i].slot for i in self.names})

    @property
    def tokens(self) -> list[str]:
        return sorted({self.entries[i].token for i in self.names})

    def added(self) -> Counter[Slot]:
        return Counter(self.entries[i].slot for i in self.admitted)

    def _holds(self) -> list[tuple[str, Hold]]:
        """The clusters this attempt moves: those it enrolls a name in, if not moved yet."""
        tokens = sorted({self.entries[i].token for i in self.admitted})
        held = ((token, self.places[token]) for token in tokens)
        return [(token, place) for token, place in held if isinstance(place, Hold)]

    def txn(self) -> dict[str, Any]:
        return {"compare": self._compare(), "success": self._success(), "failure": self._reads()}

    def _compare(self) -> list[dict[str, Any]]:
        ops = [c for token, profile in self.slots for c in self.counts[token, profile].compare(
            token, profile)]  # fmt: skip
        ops += [absent(self.entries[i].claim) for i in self.names]
        holds = dict(self._holds())
        for token in self.tokens:  # a cluster whose lease is gone has no config any more
            ops += holds[token].compare(token) if token in holds else [_exists(token)]
        return ops

    def _success(self) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for i in self.admitted:
            entry = self.entries[i]
            lease = lease_of(self.places[entry.token])
            ops.append(put(entry.claim, entry.record.serial, lease))
            ops.append(put(keys.certificate(entry.token, entry.record.serial),
                           entry.record.model_dump_json(), lease))  # fmt: skip
        for (token, profile), added in sorted(self.added().items()):
            lease = lease_of(self.places[token])
            ops += self.counts[token, profile].puts(token, profile, added, lease)
        return ops + [op for token, hold in self._holds() for op in hold.puts(token)]

    def _reads(self) -> list[dict[str, Any]]:
        """Reads of the counts, the claims, each config and each Hold's name: see `failed`."""
        ops = [op for token, profile in self.slots for op in Count.reads(token, profile)]
        ops += [{"request_range": {"key": b64(self.entries[i].claim), "count_only": True}}
                for i in self.names]  # fmt: skip
        ops += [{"request_range": {"key": b64(keys.cluster_config(token))}}
                for token in self.tokens]  # fmt: skip
        return ops + [{"request_range": {"key": b64(keys.cluster_name(hold.name))}}
                      for _, hold in self._holds() if hold.name]  # fmt: skip

    def failed(self, responses: list[dict[str, Any]], revision: int) -> Failure:
        """What the responses of this attempt's failure reads (at `revision`) say."""
        reads = iter([r.get("response_range", {}) for r in responses])
        found = Failure()
        for slot in self.slots:
            found.counts[slot] = Count.read(next(reads), next(reads), revision)
        found.claimed = [i for i in self.names if int(next(reads).get("count", 0))]
        holds = dict(self._holds())
        for token in self.tokens:
            config = next(reads).get("kvs", [])
            if not config:
                found.gone.add(token)
            elif token in holds and decode_kv(config[0]).lease != holds[token].from_lease:
                found.moved.add(token)
        for token, hold in holds.items():
            if hold.name:
                name = next(reads).get("kvs", [])
                if not name or decode_kv(name[0]).value != token.encode():
                    found.unnamed.add(token)
        return found
