"""The key layout round-trips, and foreign keys are not mistaken for ours."""

from __future__ import annotations

import pytest

from discoverd.store import keys

TOKEN = "3e86b59982e49066c5d813af1c2e2579"


@pytest.mark.parametrize(
    ("key", "kind", "name"),
    [
        (keys.cluster_config(TOKEN), keys.KeyKind.CONFIG, ""),
        (keys.v2_member(TOKEN, "8e9e05c52164694d"), keys.KeyKind.V2_MEMBER, "8e9e05c52164694d"),
        (keys.enrolled(TOKEN, "peer", "infra0"), keys.KeyKind.ENROLLED, "peer/infra0"),
        (keys.enrolled_count(TOKEN, "peer"), keys.KeyKind.ENROLLED_COUNT, "peer"),
        (keys.roster(TOKEN, "peer"), keys.KeyKind.ROSTER, "peer"),
    ],
)
def test_round_trip(key, kind, name):
    parsed = keys.parse(key)
    assert parsed == keys.ParsedKey(kind, TOKEN, name)
    assert key.startswith(keys.cluster_prefix(TOKEN))


@pytest.mark.parametrize(
    "key",
    [
        "/other/app/key",
        keys.ROOT + "something",
        keys.CLUSTERS + TOKEN,
        keys.CLUSTERS + TOKEN + "/unknown",
        keys.CLUSTERS + TOKEN + "/v2/",
        keys.CLUSTERS + TOKEN + "/v2/a/b",
    ],
)
def test_unknown_keys_are_ignored(key):
    assert keys.parse(key) is None
