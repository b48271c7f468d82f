# PluginGuard: `make demo` runs the whole product on a local control plane it starts
# itself; `make test` runs every test. Both install what they need first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := .pluginguard/demo

.PHONY: test demo demo-down controlplane system-deps lint clean

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
