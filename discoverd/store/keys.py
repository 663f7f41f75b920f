"""The etcd key layout. This module is the only place a key is built or parsed.

Everything discoverd stores lives under one root, one directory per cluster token:

    /discoverd/v1/clusters/<token>/config       ClusterConfig JSON; holds the token's lease
    /discoverd/v1/clusters/<token>/v2/<id>      a v2 discovery registration:
                                                {"value": "name=peerURL,...", "at": unix time}
                                                (plain "name=peerURL,..." from older versions)
    /discoverd/v1/clusters/<token>/v3/<id>      a v3 discovery registration, the same JSON
    /discoverd/v1/clusters/<token>/names/<n>    NameClaim JSON: who holds member name <n>
                                                (lower-cased), created in the registration's txn
    /discoverd/v1/clusters/<token>/members/<n>  a member API record: MemberRecord JSON
    /discoverd/v1/clusters/<token>/ca           CaRecord JSON: the CA certificate, its sealed key
    /discoverd/v1/clusters/<token>/certs/<sn>   CertRecord JSON of an issued certificate
    /discoverd/v1/clusters/<token>/enrolled/<profile>/<name>   the serial a name was enrolled with
    /discoverd/v1/clusters/<token>/enrolled-count/<profile>    how many enrolled/<profile>/ keys
                                                exist: a decimal integer, compared and set in
                                                the transactions that create or delete one
    /discoverd/v1/clusters/<token>/roster/<profile>            older versions: JSON list of the
                                                enrolled names; deleted when the count is made
    /discoverd/v1/names/<name>                  the token a cluster name belongs to (unique; on
                                                the lease of its cluster's config, always)

For example, a 3-member token 3e86b59982e49066c5d813af1c2e2579 with one registered member:

    /discoverd/v1/clusters/3e86b59982e49066c5d813af1c2e2579/config      {"size": 3, ...}
    /discoverd/v1/clusters/3e86b59982e49066c5d813af1c2e2579/v2/8e9e05c52164694d
                                   {"value": "infra0=http://10.0.1.10:2380", "at": 1700000000.0}
    /discoverd/v1/clusters/3e86b59982e49066c5d813af1c2e2579/names/infra0
                    {"peer_urls": ["http://10.0.1.10:2380"], "member_id": "8e9e05c52164694d"}

Every key of a token is attached to the token's lease, so the token expires as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

ROOT = "/discoverd/v1/"
CLUSTERS = ROOT + "clusters/"
NAMES = ROOT + "names/"


class KeyKind(Enum):
    CONFIG = "config"
    V2_MEMBER = "v2"
    V3_MEMBER = "v3"
    API_MEMBER = "members"
    NAME = "name"
    MEMBER_NAME = "names"
    CA = "ca"
    CERT = "certs"
    ENROLLED = "enrolled"
    ENROLLED_COUNT = "enrolled-count"
    ROSTER = "roster"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: KeyKind
    token: str
    name: str = ""


def cluster_prefix(token: str) -> str:
    """`/discoverd/v1/clusters/<token>/`: every key of one cluster."""
    return f"{CLUSTERS}{token}/"


def cluster_config(token: str) -> str:
    """`/discoverd/v1/clusters/<token>/config`"""
    return f"{CLUSTERS}{token}/config"


def v2_member(token: str, member_id: str) -> str:
    """`/discoverd/v1/clusters/<token>/v2/<id>`"""
    return f"{CLUSTERS}{token}/v2/{member_id}"


def v3_member(token: str, member_id: str) -> str:
    """`/discoverd/v1/clusters/<token>/v3/<id>`"""
    return f"{CLUSTERS}{token}/v3/{member_id}"


def discovery_member(token: str, member_id: str, protocol: str) -> str:
    """The registration key of `member_id` through discovery `protocol` ("v2" or "v3")."""
    return v3_member(token, member_id) if protocol == "v3" else v2_member(token, member_id)


def discovery_members(token: str, protocol: str) -> str:
    """`/discoverd/v1/clusters/<token>/<protocol>/`: every registration through one protocol."""
    return f"{CLUSTERS}{token}/{protocol}/"


def api_member(token: str, name: str) -> str:
    """`/discoverd/v1/clusters/<token>/members/<name>`"""
    return f"{CLUSTERS}{token}/members/{name}"


def member_name(token: str, name: str) -> str:
    """`/discoverd/v1/clusters/<token>/names/<name>`, the name lower-cased: the claim that makes
    member names unique per cluster across discovery and the member API."""
    return f"{CLUSTERS}{token}/names/{name.lower()}"


def cluster_ca(token: str) -> str:
    """`/discoverd/v1/clusters/<token>/ca`"""
    return f"{CLUSTERS}{token}/ca"


def certificate(token: str, serial: str) -> str:
    """`/discoverd/v1/clusters/<token>/certs/<serial>`"""
    return f"{CLUSTERS}{token}/certs/{serial}"


def certificates(token: str) -> str:
    """`/discoverd/v1/clusters/<token>/certs/`: every certificate record of a cluster."""
    return f"{CLUSTERS}{token}/certs/"


def enrolled(token: str, profile: str, name: str) -> str:
    """`/discoverd/v1/clusters/<token>/enrolled/<profile>/<name>`"""
    return f"{CLUSTERS}{token}/enrolled/{profile}/{name}"


def enrolled_names(token: str, profile: str) -> str:
    """`/discoverd/v1/clusters/<token>/enrolled/<profile>/`: every name enrolled for a profile."""
    return f"{CLUSTERS}{token}/enrolled/{profile}/"


def enrolled_count(token: str, profile: str) -> str:
    """`/discoverd/v1/clusters/<token>/enrolled-count/<profile>`: how many names are enrolled
    for a profile (the keys under `enrolled_names`)."""
    return f"{CLUSTERS}{token}/enrolled-count/{profile}"


def roster(token: str, profile: str) -> str:
    """`/discoverd/v1/clusters/<token>/roster/<profile>`: the JSON list of the names enrolled
    for a profile, as older versions kept it (replaced by `enrolled_count`)."""
    return f"{CLUSTERS}{token}/roster/{profile}"


def cluster_name(name: str) -> str:
    """`/discoverd/v1/names/<name>`: its value is the token."""
    return f"{NAMES}{name}"


_CHILDREN = {
    "v2": KeyKind.V2_MEMBER,
    "v3": KeyKind.V3_MEMBER,
    "members": KeyKind.API_MEMBER,
    "names": KeyKind.MEMBER_NAME,
    "certs": KeyKind.CERT,
    "enrolled-count": KeyKind.ENROLLED_COUNT,
    "roster": KeyKind.ROSTER,
}
_SINGLES = {"config": KeyKind.CONFIG, "ca": KeyKind.CA}


def parse(key: str) -> ParsedKey | None:
    """The meaning of a key under ROOT, or None for a key this version does not know."""
    if key.startswith(NAMES):
        name = key[len(NAMES) :]
        return ParsedKey(KeyKind.NAME, "", name) if name and "/" not in name else None
    if not key.startswith(CLUSTERS):
        return None
    parts = key[len(CLUSTERS) :].split("/")
    kind: KeyKind | None = None
    name = ""
    if len(parts) == 2:
        kind = _SINGLES.get(parts[1])
    elif len(parts) == 3 and parts[2]:
        kind, name = _CHILDREN.get(parts[1]), parts[2]
    elif len(parts) == 4 and parts[1] == "enrolled" and parts[2] and parts[3]:
        kind, name = KeyKind.ENROLLED, f"{parts[2]}/{parts[3]}"
    return ParsedKey(kind, parts[0], name) if kind is not None else None
