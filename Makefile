# PluginGuard: `make demo` runs the whole product on a local control plane it starts
# itself; `make test` runs every test. Both install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := .pluginguard/demo

.PHONY: test demo demo-down controlplane system-deps clean bench

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV)
	@echo "installing PluginGuard and its dependencies into $(VENV)"
	@$(BIN)/pip install --quiet -e '.[test]' >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

system-deps:
	@scripts/system-deps

# kube-apiserver, etcd and kubectl, and helm for the chart's tests: built from their Go
# modules once, then cached.
controlplane: system-deps
	@tests/controlplane/build.sh >/dev/null
	@tests/controlplane/helm/build.sh >/dev/null

test: system-deps $(BIN)/.installed controlplane
	$(BIN)/pytest -q -rfEs

demo: system-deps $(BIN)/.installed controlplane
	$(BIN)/python scripts/demo up $(DEMO_DIR)

demo-down: $(BIN)/.installed
	$(BIN)/python scripts/demo down $(DEMO_DIR)

# Every benchmark, each beside its floor, on this machine (~15 min on 2 cores; BENCH_PLUGINS=1000
# for a shorter operator run): benchmarks/out/results.json and results.md.
bench: system-deps $(BIN)/.installed
	@$(BIN)/pip install --quiet -e '.[test,bench]' >$(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@tests/controlplane/build.sh >/dev/null
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
