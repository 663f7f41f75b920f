"""The etcd v3 discovery face: gRPC for etcd >= 3.6 members (`--discovery-token`)."""
