"""How far a bootstrap got, judged from the cluster view: etcd's own registrations in discovery
mode, the members' health in srv mode, never `join`'s member API records alone."""

from __future__ import annotations

import pytest

from discoverd.clusters.health import Health, State
from discoverd.clusters.progress import DISCOVERY, SRV, judge, needs_health

HEALTHY = Health(State.HEALTHY)
DOWN = Health(State.UNHEALTHY, "connection refused")
TLS = Health(State.UNCHECKED, "TLS: pass --cert/--key")


def view(*members: tuple[str, bool, str | None], size: int = 3) -> dict[str, object]:
    """A cluster view with (name, joined, protocol etcd registered through) members."""
    return {
        "size": size,
        "certificates": [],
        "members": [
            {
                "name": name,
                "peer_urls": [f"http://10.0.0.{i}:2380"],
                "client_urls": [f"http://10.0.0.{i}:2379"],
                "joined": joined,
                "etcd_registered": etcd is not None,
                "protocol": etcd,
                "discovery_id": f"{i:016x}" if etcd else None,
            }
            for i, (name, joined, etcd) in enumerate(members, 1)
        ],
    }


JOINED_ONLY = view(("a", True, None), ("b", True, None), ("c", True, None))
TWO_BY_ETCD = view(("a", True, "v2"), ("b", True, "v2"), ("c", True, None))


@pytest.mark.parametrize(
    ("cluster", "health", "mode", "complete", "settled", "verdict"),
    [
        # the bug: three member API records, two etcds that registered
        (TWO_BY_ETCD, {}, DISCOVERY, False, False,
         "incomplete: 2 of 3 members registered by etcd itself (discovery); "
         "3 of 3 joined (member API)"),
        (view(("a", True, "v3"), ("b", True, "v3"), ("c", True, "v3")), {}, DISCOVERY,
         True, True, None),
        # a hand bootstrap (etcd --discovery, no join): etcd's registrations are all there is
        (view(("a", False, "v2"), ("b", False, "v2"), ("c", False, "v2")), {}, DISCOVERY,
         True, True, None),
        # srv mode: no discovery registration, so the members' health decides
        (JOINED_ONLY, dict.fromkeys("abc", HEALTHY), SRV, True, True, None),
        (JOINED_ONLY, {"a": HEALTHY, "b": HEALTHY, "c": DOWN}, SRV, False, False,
         "incomplete: 2 of 3 members healthy"),
        # what cannot be checked is said, and ends a --wait once nothing else can change
        (JOINED_ONLY, dict.fromkeys("abc", TLS), SRV, False, True,
         "cannot verify: 0 of 3 members healthy"),
        (JOINED_ONLY, {"a": HEALTHY, "b": TLS, "c": DOWN}, SRV, False, False,
         "incomplete: 1 of 3 members healthy"),
        (view(("a", True, None), ("b", True, None)), dict.fromkeys("ab", TLS), SRV, False, False,
         "incomplete: 0 of 3 members healthy"),
    ],
)  # fmt: skip
def test_judge(cluster, health, mode, complete, settled, verdict):
    progress = judge(cluster, health)
    assert (progress.mode, progress.complete, progress.settled) == (mode, complete, settled)
    if verdict is None:
        assert progress.verdict() is None
    else:
        assert progress.verdict().startswith(verdict), progress.verdict()


def test_unchecked_members_say_why():
    verdict = judge(JOINED_ONLY, {"a": HEALTHY, "b": HEALTHY, "c": TLS}).verdict()
    assert verdict == (
        "cannot verify: 2 of 3 members healthy (srv mode: no discovery registration, so etcd's "
        "health through the client URLs); 3 of 3 joined (member API); 1 not checked "
        "(TLS: pass --cert/--key)"
    )


@pytest.mark.parametrize(
    ("cluster", "asked"),
    [
        (JOINED_ONLY, {"a", "b", "c"}),  # srv mode: every member
        (TWO_BY_ETCD, set()),  # discovery mode: etcd's registrations are the proof
    ],
)
def test_health_is_asked_in_srv_mode_only(cluster, asked):
    assert set(needs_health(cluster)) == asked


def test_a_view_of_an_older_server_counts_its_discovery_ids():
    old = view(("a", True, "v2"), ("b", True, None))
    for member in old["members"]:
        for key in ("joined", "etcd_registered", "protocol"):
            del member[key]
    progress = judge(old, {})
    assert (progress.mode, progress.by_etcd) == (DISCOVERY, 1)
