# The two commands a user needs: `make run` and `make test`.
PYTHON   ?= python3.11
VENV     ?= .venv
PY       := $(VENV)/bin/python
HOST     ?= 127.0.0.1
PORT     ?= 8080
CHROMIUM ?= /usr/bin/chromium
JANUS    ?= /usr/bin/janus
REDIS    ?= /usr/bin/redis-server
# Debian's PostgreSQL server package; tests start their own server from its initdb/postgres.
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) /usr/lib/postgresql/15/bin/initdb)
NGINX    ?= /usr/sbin/nginx
NFT      ?= /usr/sbin/nft
IP       ?= /usr/sbin/ip
COTURN   ?= /usr/bin/turnserver
NPM      ?= /usr/bin/npm
# axe-core, the accessibility checker tests/browser injects into the page (version pinned there).
AXE      := tests/browser/axe/node_modules/axe-core/axe.min.js
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT      := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test fuzz bench lint typecheck check clean asan

# The native packet path, rtc/_fastpath.c (optional at import: rtc/packet_path.py).
# Built in place, and rebuilt whenever the C changes (an editable install alone
# would keep the old build). Needs a C compiler, OpenSSL's and Python's headers.
FASTPATH := rtc/_fastpath$(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null || echo .so)
OPENSSL_H := /usr/include/openssl/evp.h
PYTHON_H := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("include"))' 2>/dev/null)/Python.h
CC_BIN   := /usr/bin/gcc

# Debian's python3.11 ships venv separately (python3.11-venv).
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(APT) update -qq && $(APT) install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# The nudity extra too: its tests must run (and fail if it is missing), never skip.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,bench,nudity,postgresql]'
	touch $@

# Debian's Chromium for tests/browser. Never `playwright install`: browsers
# are not downloaded, Playwright drives this one.
$(CHROMIUM):
	$(APT) update -qq
	$(APT) install -y -qq chromium

# Debian's Janus, the C SFU the benchmark relays the same load through as an anchor.
$(JANUS):
	$(APT) update -qq
	$(APT) install -y -qq janus

# Debian's Redis, the shared engine of matcher/redis.py; tests start their own server.
$(REDIS):
	$(APT) update -qq
	$(APT) install -y -qq redis-server

# Debian's PostgreSQL, the shared moderation store (moderation/store_pg.py); tests run
# their own server in a temp dir (tests/postgres_server.py), never the system service.
$(PG_INITDB):
	$(APT) update -qq
	$(APT) install -y -qq postgresql

# Debian's nginx, run by tests/test_nginx.py as an ordinary process (never the
# system service) with docs/nginx-cluster.conf in front of two nodes.
$(NGINX):
	$(APT) update -qq
	$(APT) install -y -qq nginx

# tests/netns.py builds networks with ip netns, veth pairs and nftables (needs root).
$(NFT):
	$(APT) update -qq
	$(APT) install -y -qq nftables

$(IP):
	$(APT) update -qq
	$(APT) install -y -qq iproute2

# Debian's coturn, started by tests/test_networks.py with its own config on its own
# ports inside a test network (never the system service).
$(COTURN):
	$(APT) update -qq
	$(APT) install -y -qq coturn

# Debian's npm, only to install the pinned axe-core for the browser tests.
$(NPM):
	$(APT) update -qq
	$(APT) install -y -qq npm

$(AXE): tests/browser/axe/package.json tests/browser/axe/package-lock.json | $(NPM)
	cd tests/browser/axe && $(NPM) ci --no-audit --no-fund --silent
	touch $@

$(OPENSSL_H):
	$(APT) update -qq
	$(APT) install -y -qq libssl-dev

$(PYTHON_H):
	$(APT) update -qq
	$(APT) install -y -qq $(notdir $(PYTHON))-dev

$(CC_BIN):
	$(APT) update -qq
	$(APT) install -y -qq gcc

$(FASTPATH): rtc/_fastpath.c $(wildcard rtc/native/*.c rtc/native/*.h) setup.py $(VENV)/.installed | $(OPENSSL_H) $(PYTHON_H) $(CC_BIN)
	$(PY) setup.py -q build_ext --force --build-lib build/lib --build-temp build/temp
	# A new file, not rewritten in place: a running server has the old one mapped.
	cp --remove-destination build/lib/$@ $@

run: $(VENV)/.installed $(FASTPATH)
	$(PY) server.py --host $(HOST) --port $(PORT)

# Lint and type checks first: they take seconds and are part of "the tests pass".
test: $(VENV)/.installed-test $(FASTPATH) $(CHROMIUM) $(JANUS) $(REDIS) $(PG_INITDB) $(NGINX) $(NFT) $(IP) $(COTURN) $(AXE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MAKE) asan
	$(PY) -m pytest $(PYTEST_ARGS)

# The protocol fuzzer at length, new random examples each run (make test runs a short fixed pass).
FUZZ_EXAMPLES ?= 5000
fuzz: $(VENV)/.installed-test
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 $(PY) -m pytest tests/test_fuzz.py -q -s

# The relay benchmark, e.g. make bench BENCH_ARGS="--pairs 10 --seconds 30 --compare --janus"
bench: $(VENV)/.installed-test $(JANUS)
	$(PY) -m bench.relay $(BENCH_ARGS)

# rtc/_fastpath.c under AddressSanitizer: the fuzz and differential tests of the
# native module (tests/test_fastpath.py) against a build of its own in build/asan
# (the normal in-place build is left alone). PYTHONMALLOC=malloc so that reading past
# a small bytes object is caught too (pymalloc pools would hide it). About 10 s, so
# `make test` runs it.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
asan: $(VENV)/.installed-test | $(OPENSSL_H) $(PYTHON_H) $(CC_BIN)
	RR_FASTPATH_ASAN=1 $(PY) setup.py -q build_ext --force --build-lib build/asan --build-temp build/asan-temp
	LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
		RR_FASTPATH_MODULE=build/asan/$(FASTPATH) \
		$(PY) -m pytest tests/test_fastpath.py -q -p no:cacheprovider

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build rtc/_fastpath*.so *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
