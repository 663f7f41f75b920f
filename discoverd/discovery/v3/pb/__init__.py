"""Generated protobuf and gRPC modules of discoverd's own `.proto` files (the etcd v3 discovery
subset: `discovery.proto`, package etcdserverpb; `mvcc.proto`, package mvccpb). Do not edit the
`*_pb2*` files: change the `.proto` and run `make proto`, which runs grpcio-tools (pinned to the
grpcio version in pyproject.toml):

    python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
        discoverd/discovery/v3/pb/mvcc.proto discoverd/discovery/v3/pb/discovery.proto
"""
