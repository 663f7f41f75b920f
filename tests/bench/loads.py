"""A wrk load's result as the bench records it, for the report tests."""

from __future__ import annotations


def load_result(rps: float, method: str = "GET", path: str = "/<token>") -> dict[str, object]:
    return {
        "method": method,
        "path": path,
        "requests_per_s": rps,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "non_2xx": 0,
        "socket_errors": 0,
        "cpu_us_per_request": {
            "discoverd": 50.0,
            "etcd": 1.0,
            "etcd-3.4": 30.0,
            "go-discovery": 90.0,
        },
    }
