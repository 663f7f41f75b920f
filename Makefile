# The two commands of the README: `make run` and `make test`. Everything they need is installed
# here: Python packages into .venv, Debian packages with apt-get when running as root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
APT_PACKAGES := etcd-server wrk
APT_NEEDED   := $(shell command -v etcd >/dev/null || echo etcd-server) $(shell command -v wrk >/dev/null || echo wrk)

.PHONY: run test check bench apt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/discoverd serve $(ARGS)

# Debian's etcd-server is etcd 3.4 (compatibility tests); wrk drives `make bench`.
apt:
	@if [ -n "$(strip $(APT_NEEDED))" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(APT_NEEDED) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_NEEDED) >/dev/null; \
	  else \
	    echo "NOTE: not root or no apt-get: $(APT_NEEDED) not installed; tests that need them will say so"; \
	  fi; \
	fi

check: $(STAMP)
	$(BIN)/ruff check discoverd tests bench
	$(BIN)/ruff format --check discoverd tests bench
	$(BIN)/mypy discoverd

test: $(STAMP) apt check
	$(BIN)/pytest -q

bench: $(STAMP) apt
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) discoverd-data bench/results .pytest_cache .mypy_cache .ruff_cache
