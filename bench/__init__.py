"""Benchmark suite of discoverd: `python -m bench [--quick] [--skip-dns | --dns-only]` (or
`make bench`).

It starts its own etcd and one `discoverd serve` on loopback, measures read and /new
throughput with wrk, long-poll register->wake latency and the memory of concurrent waits, then
the DNS responder's SRV and A throughput with dnsperf against dnsmasq serving the same records
(bench.dnsload), and writes bench/results/<UTC timestamp>.json and bench/results/latest.json.
"""
