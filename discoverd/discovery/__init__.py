"""The etcd discovery protocols, one face each: `v2` (HTTP, etcd <= 3.6 `--discovery`) and `v3`
(gRPC, etcd >= 3.6 `--discovery-token`). Both are thin wire faces over `discoverd.directory`."""
