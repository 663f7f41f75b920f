# The two commands of the README: `make run` and `make test`. Everything they need is installed
# here: Python packages into .venv, Debian packages with apt-get when running as root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
ARGS   ?=

# command:debian-package pairs. Tests: etcd 3.4 (compatibility), dig, wrk (the bench's own tests). Bench: the load tools
# and the anchors: dnsmasq (DNS), cfssl (signing), etcd 3.4's v2 keys API (v2 HTTP).
TEST_TOOLS  := etcd:etcd-server dig:bind9-dnsutils unshare:util-linux cloud-init:cloud-init wrk:wrk
BENCH_TOOLS := wrk:wrk dnsperf:dnsperf dnsmasq:dnsmasq-base cfssl:golang-cfssl etcd:etcd-server
# Stock etcd versions with v3 discovery (no wheel or Debian package exists): built from etcd's Go
# modules once per machine into $DISCOVERD_ETCD_CACHE (~/.cache/discoverd-etcd), never the tree.
ETCD_VERSIONS := 3.6.14 3.7.1

.PHONY: run test check bench apt-test apt-bench etcd-test clean proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/discoverd serve --log-format text $(ARGS)

define apt_install
	@missing=""; for pair in $(1); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "NOTE: not root or no apt-get:$$missing not installed; what needs them says so"; \
	  fi; \
	fi
endef

apt-test:
	$(call apt_install,$(TEST_TOOLS))

apt-bench:
	$(call apt_install,$(BENCH_TOOLS))

# Cached: a second run only finds the binaries. No Go and nothing cached: a loud note, and the
# tests that need the binaries skip saying so. Go present but the build fails: make stops (a broken
# build must not turn into skipped tests).
etcd-test:
	@for version in $(ETCD_VERSIONS); do \
	  tests/tools/build_etcd.sh $$version; rc=$$?; \
	  if [ $$rc = 3 ]; then \
	    echo "NOTE: ********************************************************************"; \
	    echo "NOTE: no Go toolchain on PATH: etcd $$version is NOT built, so the v3 discovery"; \
	    echo "NOTE: e2e tests that need it will SKIP. Install Go >= 1.26 and rerun make test."; \
	    echo "NOTE: ********************************************************************"; \
	  elif [ $$rc != 0 ]; then exit $$rc; fi; \
	done

check: $(STAMP)
	$(BIN)/ruff check discoverd tests bench
	$(BIN)/ruff format --check discoverd tests bench
	$(BIN)/mypy discoverd

test: $(STAMP) apt-test etcd-test check
	$(BIN)/pytest -q

# Regenerate the protobuf/gRPC modules of the v3 discovery face from discoverd's own .proto files.
PROTOS := discoverd/discovery/v3/pb/mvcc.proto discoverd/discovery/v3/pb/discovery.proto
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	rm -f discoverd/discovery/v3/pb/mvcc_pb2_grpc.py

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) apt-bench etcd-test
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) discoverd-data bench/results .pytest_cache .mypy_cache .ruff_cache
