"""discoverd's own .proto subset speaks etcd's wire: the package, service and method names and
every field number the stock members and etcdctl use (shared/reference/v3-discovery.md), read
back from the generated descriptors, and the generated modules are what `make proto` makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from discoverd.discovery.v3.pb import discovery_pb2, mvcc_pb2

REPO = Path(__file__).resolve().parents[2]
PB = REPO / "discoverd/discovery/v3/pb"

FIELDS = {
    "etcdserverpb.ResponseHeader": {"cluster_id": 1, "member_id": 2, "revision": 3, "raft_term": 4},
    "etcdserverpb.RangeRequest": {
        "key": 1, "range_end": 2, "limit": 3, "revision": 4, "sort_order": 5, "sort_target": 6,
        "serializable": 7, "keys_only": 8, "count_only": 9, "min_mod_revision": 10,
        "max_mod_revision": 11, "min_create_revision": 12, "max_create_revision": 13,
    },
    "etcdserverpb.RangeResponse": {"header": 1, "kvs": 2, "more": 3, "count": 4},
    "etcdserverpb.PutRequest": {
        "key": 1, "value": 2, "lease": 3, "prev_kv": 4, "ignore_value": 5, "ignore_lease": 6,
    },
    "etcdserverpb.PutResponse": {"header": 1, "prev_kv": 2},
    "etcdserverpb.WatchRequest": {"create_request": 1, "cancel_request": 2, "progress_request": 3},
    "etcdserverpb.WatchCreateRequest": {
        "key": 1, "range_end": 2, "start_revision": 3, "progress_notify": 4, "filters": 5,
        "prev_kv": 6, "watch_id": 7, "fragment": 8,
    },
    "etcdserverpb.WatchCancelRequest": {"watch_id": 1},
    "etcdserverpb.WatchResponse": {
        "header": 1, "watch_id": 2, "created": 3, "canceled": 4, "compact_revision": 5,
        "cancel_reason": 6, "fragment": 7, "events": 11,
    },
    "etcdserverpb.AuthenticateRequest": {"name": 1, "password": 2},
    "etcdserverpb.AuthenticateResponse": {"header": 1, "token": 2},
    "mvccpb.KeyValue": {
        "key": 1, "create_revision": 2, "mod_revision": 3, "version": 4, "value": 5, "lease": 6,
    },
    "mvccpb.Event": {"type": 1, "kv": 2, "prev_kv": 3},
}  # fmt: skip

ENUMS = {
    "etcdserverpb.RangeRequest.SortOrder": {"NONE": 0, "ASCEND": 1, "DESCEND": 2},
    "etcdserverpb.RangeRequest.SortTarget": {
        "KEY": 0,
        "VERSION": 1,
        "CREATE": 2,
        "MOD": 3,
        "VALUE": 4,
    },
    "etcdserverpb.WatchCreateRequest.FilterType": {"NOPUT": 0, "NODELETE": 1},
    "mvccpb.Event.EventType": {"PUT": 0, "DELETE": 1},
}

METHODS = {
    "etcdserverpb.KV": {"Range": (False, False), "Put": (False, False)},
    "etcdserverpb.Watch": {"Watch": (True, True)},
    "etcdserverpb.Auth": {"Authenticate": (False, False)},
}

POOL = discovery_pb2.DESCRIPTOR.pool


@pytest.mark.parametrize("message", list(FIELDS))
def test_field_numbers_are_etcds(message):
    descriptor = POOL.FindMessageTypeByName(message)
    assert {field.name: field.number for field in descriptor.fields} == FIELDS[message]


@pytest.mark.parametrize("enum", list(ENUMS))
def test_enum_values_are_etcds(enum):
    descriptor = POOL.FindEnumTypeByName(enum)
    assert {value.name: value.number for value in descriptor.values} == ENUMS[enum]


@pytest.mark.parametrize("service", list(METHODS))
def test_services_and_methods_are_etcds(service):
    descriptor = POOL.FindServiceByName(service)
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in descriptor.methods}
    assert streaming == METHODS[service]


def test_the_generated_modules_are_what_make_proto_makes(tmp_path):
    """Regenerate into a scratch tree with the pinned grpcio-tools and compare byte for byte."""
    out = tmp_path / "out"
    out.mkdir()
    protos = ["discoverd/discovery/v3/pb/mvcc.proto", "discoverd/discovery/v3/pb/discovery.proto"]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={out}",
         f"--pyi_out={out}", f"--grpc_python_out={out}", *protos],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    for name in ("discovery_pb2.py", "discovery_pb2.pyi", "discovery_pb2_grpc.py",
                 "mvcc_pb2.py", "mvcc_pb2.pyi"):  # fmt: skip
        generated = out / "discoverd/discovery/v3/pb" / name
        assert generated.read_bytes() == (PB / name).read_bytes(), f"{name}: run `make proto`"
    assert mvcc_pb2.DESCRIPTOR.package == "mvccpb"
