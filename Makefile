# The two commands: `make demo` and `make test`. Both create or refresh .venv by themselves;
# the install reruns only when pyproject.toml changes (stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean prometheus gpu-check

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/chaos-train local --out out/demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# promtool and the Prometheus server for the conformance tests: Debian's prometheus package,
# installed when missing and we are root; otherwise those tests skip and say why.
prometheus:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	    || echo "make: could not install Debian's prometheus package"; \
	  else echo "make: promtool/prometheus missing and not root: the Prometheus tests will skip"; fi; \
	fi

test: lint prometheus
	$(BIN)/python -m pytest

# a short elastic job with the model on this machine's CUDA device (examples/train/gpu_check.sh
# says what it verifies); without one it says so and exits 0
gpu-check: $(STAMP)
	bash examples/train/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
