# kbchat: `make run` (everything on this machine, with the demo knowledge base) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install chromium lint format bench migrate worker clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins every package (torch is the CPU wheel on this machine's disk)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kbchat run

# Debian's Chromium for the end-to-end test (Playwright drives it; it never downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) chromium
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check infra telemetry db rag usecases tasks api kbchat streamlit_app pages tests bench
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format infra telemetry db rag usecases tasks api kbchat streamlit_app pages tests bench

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || true; done

migrate: $(STAMP)
	$(VENV)/bin/kbchat migrate

worker: $(STAMP)
	$(VENV)/bin/kbchat worker --queues ingest,chat,maintenance

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
