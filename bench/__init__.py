"""Benchmark suite of discoverd: `python -m bench [--quick]` (or `make bench`).

It starts its own etcd and one `discoverd serve` on loopback, measures read and /new
throughput with wrk, long-poll register->wake latency and the memory of concurrent waits, and
writes bench/results/<UTC timestamp>.json and bench/results/latest.json.
"""
