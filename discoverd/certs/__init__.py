"""The certificate authority face: one CA per cluster, per-node certificates for etcd."""
