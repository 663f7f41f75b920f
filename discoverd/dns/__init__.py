"""The authoritative DNS face: etcd SRV records of every cluster, live from the registry."""
