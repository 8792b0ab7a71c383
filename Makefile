# authmilter: `make run` starts the milter on the sample config, `make test` runs every test.
# Both install what is missing first (Debian packages, then a virtualenv in .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/authmilter.ini
DEBIAN_PACKAGES := postfix nsd unbound libmilter-dev gcc python3-dev python3-venv iproute2 ldnsutils dnsutils procps openssl \
	opendkim-tools
STAMP_DEB := $(VENV)/.debian-packages
STAMP_PY := $(VENV)/.installed

.PHONY: all deps run test test-unit test-e2e check-config bench clean

all: test

# Debian's packages, installed only when one is missing (postfix must not start on its own: the tests run
# private instances, and a packaged instance would hold port 25).
$(STAMP_DEB):
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PY): pyproject.toml setup.py milter/authmilter/_relaxed.c $(STAMP_DEB)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

deps: $(STAMP_PY)

run: deps
	$(VENV)/bin/authmilter run --config $(CONFIG)

check-config: deps
	$(VENV)/bin/authmilter check-config $(CONFIG)

test: deps
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: deps
	$(PY) -m pytest -q -p no:cacheprovider -m 'not e2e' tests

test-e2e: deps
	$(PY) -m pytest -q -p no:cacheprovider -m e2e tests

# OpenDKIM + OpenDMARC and dkimpy-milter are only yardsticks: installed for `make bench`, never needed to run authmilter.
BENCH_PACKAGES := opendkim opendmarc dkimpy-milter

bench: deps
	@missing=""; for p in $(BENCH_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info milter/*.egg-info
