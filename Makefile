# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha1sum | cut -c1-12)

.PHONY: setup test test-slow bench demo clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip setuptools wheel
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	@v=$$($(BIN)/python -c 'import torch; print(torch.__version__)'); case "$$v" in 2.13.0*) ;; *) echo "torch $$v installed, expected 2.13.0" >&2; exit 1;; esac
	rm -f $(VENV)/.installed-*
	touch $@

# Fast suite: tiny real models only. Exit code 5 (no tests collected) fails.
test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

bench: setup
	$(BIN)/python -m pytest -m slow -q
	$(BIN)/python bench/oracle.py

demo: setup
	$(BIN)/saexplain demo

clean-venv:
	rm -rf $(VENV)
