# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU wheel by default; pick a CUDA build with e.g. `make TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url <your CUDA wheel index>"`.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
LLAMA_CPP_VERSION := $(word 2,$(subst ==, ,$(LLAMA_CPP_SPEC)))
# Not -march=native: that enables llama.cpp's AMX kernels, which crash (SIGSEGV) on VMs that advertise
# AMX without enabling it. AVX2/FMA runs on any x86-64 from the last decade; the AVX-512 and VNNI
# kernels are added where this machine's CPU has them (Q4_0 decode +8-10%, Q8_0 +3-5% on a Xeon with
# AVX-512 VNNI: benchmarks/llamacpp_threads.py), so the wheel is for this machine's CPU family.
# For a CUDA build: make LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" (the wheel cache is keyed by these flags).
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
LLAMA_X86_EXTRA := $(if $(filter avx512f,$(CPU_FLAGS)),-DGGML_AVX512=ON) \
  $(if $(filter avx512_vnni,$(CPU_FLAGS)),-DGGML_AVX512_VNNI=ON) \
  $(if $(filter avx512_bf16,$(CPU_FLAGS)),-DGGML_AVX512_BF16=ON) $(if $(filter avx_vnni,$(CPU_FLAGS)),-DGGML_AVX_VNNI=ON)
LLAMA_CMAKE_ARGS ?= $(strip -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  $(LLAMA_X86_EXTRA))
LLAMA_WHEEL_DIR = $(WHEEL_CACHE)/llama-$(shell printf '%s' "$(LLAMA_CMAKE_ARGS)" | sha1sum | cut -c1-10)
CACHE_HOME ?= $(or $(EDGE_DOWNSCALE_CACHE),$(XDG_CACHE_HOME),$(HOME)/.cache)
WHEEL_CACHE ?= $(CACHE_HOME)/edge-downscale/wheels
STAMP := $(VENV)/.edge-downscale-installed
LOCK ?= requirements/all.txt
BOOTSTRAP_SPEC ?= pip==26.3 setuptools==84.2.1 wheel==0.48.0
UV_SPEC ?= uv==0.13.9
PYTEST_ARGS ?=

.PHONY: env demo test bench clean-env check-lock lock

env: $(STAMP)

# Every package comes from a lock with sha256 hashes (requirements/, refreshed by `make lock`);
# torch (TORCH_SPEC) and the llama-cpp-python source archive are pinned here and in its lock file.
$(STAMP): pyproject.toml Makefile $(LOCK) requirements/llama-cpp-python.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(BOOTSTRAP_SPEC)
	$(PIP) install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PIP) install --quiet --require-hashes --no-deps -r $(LOCK)
	@# llama-cpp-python builds from source (minutes): build its wheel once into a cache and reuse it.
	@mkdir -p "$(LLAMA_WHEEL_DIR)"
	@ls "$(LLAMA_WHEEL_DIR)"/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "building $(LLAMA_CPP_SPEC) once into $(LLAMA_WHEEL_DIR) (a few minutes)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --quiet --no-deps --no-cache-dir --require-hashes \
	    -w "$(LLAMA_WHEEL_DIR)" -r requirements/llama-cpp-python.txt; }
	$(PIP) install --quiet --no-deps --force-reinstall "$(LLAMA_WHEEL_DIR)"/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@$(MAKE) --no-print-directory check-lock
	@touch $(STAMP)

# Installed versions must be the locked ones (CI runs this before the tests).
check-lock:
	$(PY) -m edge_downscale._env $(LOCK) --pin "$(TORCH_SPEC)" --pin "$(LLAMA_CPP_SPEC)"

# Re-resolve every lock from pyproject.toml (needs the registries); commit the result with the figures it changes.
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet "$(UV_SPEC)"
	UV=$(VENV)/bin/uv TORCH_SPEC="$(TORCH_SPEC)" LLAMA_CPP_SPEC="$(LLAMA_CPP_SPEC)" bash requirements/refresh.sh

# The product end to end: build the recipe's quick profile into a bundle, then bench it against the teacher.
DEMO_RECIPE ?= examples/recipes/smollm2-edge.yaml
DEMO_PROFILE ?= quick
demo: env
	HF_HUB_OFFLINE=1 $(VENV)/bin/edge-downscale models pull smollm2-135m
	HF_HUB_OFFLINE=1 $(VENV)/bin/edge-downscale build $(DEMO_RECIPE) --profile $(DEMO_PROFILE) --out demo-bundle --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/edge-downscale bench demo-bundle --baseline smollm2-135m --quick --out demo-report --overwrite

test: env check-lock
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: env
	HF_HUB_OFFLINE=1 $(PY) benchmarks/eval_models.py

clean-env:
	rm -rf $(VENV)
