# authmilter: `make run` starts the milter on the sample config, `make test` runs every test.
# Both install what is missing first (Debian packages, then a virtualenv in .venv).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/authmilter.ini
DEBIAN_PACKAGES := postfix nsd unbound libmilter-dev gcc python3-dev python3-venv iproute2 ldnsutils dnsutils procps openssl
# `make deb` and its tests (tests/test_packaging.py): the Debian tool chain, lintian, and groff for the man pages.
DEBIAN_PACKAGES += debhelper dpkg-dev lintian groff-base
# faketime: the end-to-end report test runs `reports send` a day later, so the day it recorded is over.
# postgresql: the report store tests run a private cluster as `nobody` (testlab/postgres.py); no system cluster is
# created (the install recipe preseeds postgresql-common/create_main_cluster to false).
DEBIAN_PACKAGES += faketime postgresql
# opendkim-tools: opendkim-testmsg verifies our signatures in the end-to-end signing tests.
DEBIAN_PACKAGES += opendkim-tools
STAMP_DEB := $(VENV)/.debian-packages
STAMP_PY := $(VENV)/.installed

.PHONY: all deps run test test-unit test-e2e test-package check-config bench clean deb man

all: test

# Debian's packages, installed only when one is missing (postfix must not start on its own: the tests run
# private instances, and a packaged instance would hold port 25). Checked again when this file changes the list.
$(STAMP_DEB): Makefile
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  echo "postgresql-common postgresql-common/create_main_cluster boolean false" | debconf-set-selections; \
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
	$(PY) -m pytest -q -p no:cacheprovider -m 'not e2e and not package' tests

# Builds the sdist, the wheel and the .deb, installs and purges the .deb (root): about a minute with pip's cache warm.
test-package: deps
	$(PY) -m pytest -q -p no:cacheprovider -m package tests

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
	$(PY) -m bench.reports

# The Debian package, left in this checkout (README, "Debian package"). debian/rules builds the virtual environment it
# ships from PyPI at the versions of debian/venv-requirements.txt; pip's cache stays inside the checkout (the
# packaging tests build in a copy and point PIP_CACHE at the original checkout's).
PIP_CACHE ?= $(CURDIR)/.cache/pip
deb: $(STAMP_DEB)
	debian/rules clean
	rm -f authmilter_*.deb
	DEB_RULES_REQUIRES_ROOT=no PIP_CACHE_DIR=$(PIP_CACHE) debian/rules binary
	@ls -1 authmilter_*.deb

# man/authmilter.ini.5 from its template, the sample config and the parser's keys (a test checks it is current).
man: deps
	$(PY) man/render_ini_manpage.py

clean:
	rm -rf $(VENV) build *.egg-info milter/*.egg-info .cache
	-debian/rules clean
