"""discoverd: bootstrap etcd members with no static configuration."""

__version__ = "0.1.0"
