"""Benchmark suite of discoverd: `python -m bench [--quick] [--skip-dns | --dns-only]
[--skip-certs | --certs-only]` (or `make bench`).

It starts its own etcd and one `discoverd serve` on loopback, measures read and /new
throughput with wrk, long-poll register->wake latency and the memory of concurrent waits, then
the DNS responder's SRV and A throughput with dnsperf against dnsmasq serving the same records
(bench.dnsload), then CSR signings per second on POST /api/v1/certs with wrk against
`cfssl serve` signing the same CSR (bench.signing; py-spy on discoverd when it is the slower),
and writes bench/results/<UTC timestamp>.json and bench/results/latest.json.
"""
