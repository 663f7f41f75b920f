"""The etcd v2 discovery face: HTTP routes and the v2 keys API JSON."""
