# The two commands: `make demo` and `make test`. Both create or refresh .venv by themselves;
# the install reruns only when pyproject.toml changes (stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint clean prometheus faketime gpu-check

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

# $(call debian_package,COMMANDS,PACKAGE,WHICH TESTS): Debian's PACKAGE, installed when one of
# COMMANDS is missing and we are root; otherwise those tests skip and say why.
define debian_package
@if ! { $(foreach c,$(1),command -v $(c) >/dev/null &&) true; }; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $(2) >/dev/null) \
    || echo "make: could not install Debian's $(2) package"; \
  else echo "make: $(2) missing and not root: $(3) will skip"; fi; \
fi
endef

# promtool and the Prometheus server for the conformance tests
prometheus:
	$(call debian_package,promtool prometheus,prometheus,the Prometheus tests)

# faketime (libfaketime) shifts one sidecar's wall clock for the clock-skew tests
faketime:
	$(call debian_package,faketime,faketime,the clock-skew tests)

test: lint prometheus faketime
	$(BIN)/python -m pytest

# a short elastic job with the model on this machine's CUDA device (examples/train/gpu_check.sh
# says what it verifies); without one it says so and exits 0
gpu-check: $(STAMP)
	bash examples/train/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
