"""What an enrollment checks against a cluster's certificates, indexed once per cluster and kept
up to date by its additions: the names enrolled per profile, the keys an operator revoked, and
which member holds each IP SAN.

A cluster's view is replaced on every change, and an enrollment adds one certificate at the
end of its inventory (`models.Cluster.with_cert`); so while the records of the last index are
the leading records of the new view (the same objects), only the new ones are read. Anything
else (a revocation or renewal marks an earlier record) rebuilds the index. An enrollment of
member 999 therefore reads one record, not 999. Owned by the event loop thread.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from discoverd.certs.pki import Profile
from discoverd.models import CertRecord, Cluster

CACHE = 1024  # clusters indexed at once
_CLIENT = Profile.CLIENT.value


@dataclass(eq=False)
class Index:
    """The index of one cluster's certificates (`certs`, the view's tuple it was built from).
    Read it before the next await: a later view of the cluster may extend it in place."""

    certs: tuple[CertRecord, ...] = ()
    names: dict[str, set[str]] = field(default_factory=dict)  # profile -> live names
    revoked_keys: set[str] = field(default_factory=set)  # SPKI SHA-256 an operator revoked
    addresses: dict[str, str] = field(default_factory=dict)  # IP SAN -> its first live member

    def add(self, records: Sequence[CertRecord]) -> None:
        for record in records:
            if record.revoked_at is not None:
                if record.revoked_key:
                    self.revoked_keys.add(record.revoked_key)
                continue
            self.names.setdefault(record.profile, set()).add(record.name)
            if record.profile != _CLIENT:
                for san in record.sans:
                    self.addresses.setdefault(san, record.name)  # DNS names too: harmless

    def holder(self, address: str) -> str | None:
        """The member whose live certificate names IP `address` (in `Sans.as_strings` form)."""
        return self.addresses.get(address)


class Inventories:
    """The index of each recently enrolled cluster."""

    def __init__(self, size: int = CACHE) -> None:
        self._size = size
        self._indexes: OrderedDict[str, Index] = OrderedDict()

    def of(self, cluster: Cluster) -> Index:
        certs = cluster.certs
        index = self._indexes.get(cluster.token)
        if index is None or not _extends(certs, index.certs):
            index = Index()
            self._indexes[cluster.token] = index
            while len(self._indexes) > self._size:
                self._indexes.popitem(last=False)
        if index.certs is not certs:
            index.add(certs[len(index.certs) :])
            index.certs = certs
        self._indexes.move_to_end(cluster.token)
        return index


def _extends(certs: tuple[CertRecord, ...], indexed: tuple[CertRecord, ...]) -> bool:
    """Whether `certs` is `indexed` with records added at the end (compared by identity, at
    C speed: the records of a view are the objects of the view before it)."""
    if certs is indexed:
        return True
    return len(certs) >= len(indexed) and all(map(operator.is_, certs, indexed))
