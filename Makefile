# kbchat: `make run` (everything on this machine, with the demo knowledge base) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install chromium nginx lint format bench migrate worker clean

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

# Debian's nginx for the load-balancer test, which runs it as its own child on a free port (config, pid, logs and
# temp files under a tmp dir). The package's own service is never started: policy-rc.d refuses it in containers,
# and where it did start, it is stopped and disabled again.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq nginx >/dev/null && \
		{ ! command -v systemctl >/dev/null 2>&1 || $(SUDO) systemctl disable --now nginx >/dev/null 2>&1 || true; }; }

test: $(STAMP) chromium nginx
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
