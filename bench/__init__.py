"""Benchmark suite of discoverd: `python -m bench [--quick] [--skip-dns | --dns-only]
[--skip-certs | --certs-only] [--skip-v3 | --v3-only]` (or `make bench`).

It starts its own etcd and one `discoverd serve` on loopback, run as a user runs it (default log
level and format: one JSON access line per request), and measures each figure beside an anchor
from the same run: v2 read and /new throughput with wrk against etcd 3.4's own v2 keys API
(bench.v2anchor), the access log's cost against the same discoverd at --log-level warning
(bench.accesslog), long-poll register->wake latency and the memory of concurrent waits, the DNS
responder with dnsperf against dnsmasq (bench.dnsload), CSR signings with wrk against
`cfssl serve` (bench.signing), and the v3 discovery face against a real etcd 3.7 (bench.v3). It
writes bench/results/<UTC timestamp>.json and bench/results/latest.json.
"""
