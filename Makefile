# llmc-py: `make train` (quick start: CPU without a GPU) and `make test` (everything CI runs).
# Set-up is part of each target: a virtualenv in .venv, the tinyshakespeare shards, the model files.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Local copies of data that would otherwise be downloaded (input.txt, GPT-2's BPE ranks).
LLMC_DATA ?= ../shared/data
TS_DIR := dev/data/tinyshakespeare
TS_INPUT := $(wildcard $(LLMC_DATA)/tinyshakespeare/input.txt)
RANKS := $(wildcard $(LLMC_DATA)/gpt2/gpt2.tiktoken)
ifneq ($(RANKS),)
export LLMC_GPT2_TIKTOKEN ?= $(abspath $(RANKS))
endif
export LLMC_TEST_DATA ?= $(abspath $(LLMC_DATA))
export PYTHONUNBUFFERED := 1
# cuda when an NVIDIA GPU answers, else cpu
DEVICE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
# the CUDA major of the driver (nvidia-smi's "CUDA Version: 13.0"): 13 and newer install requirements-cu13.txt
CUDA_MAJOR ?= $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
GPU_REQUIREMENTS := $(if $(shell [ "0$(CUDA_MAJOR)" -ge 13 ] && echo new),requirements-cu13.txt,requirements.txt)
# the tests and tools always; with a GPU its CUDA install, without one the CUDA pieces that need no driver
REQUIREMENTS := requirements-dev.txt $(if $(filter cuda,$(DEVICE)),$(GPU_REQUIREMENTS),requirements-cpu.txt)
VENV_STAMP := $(VENV)/.installed-$(DEVICE)

.PHONY: train test check-kernels data model bench gpu-check clean

$(VENV_STAMP): $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(addprefix -r ,$(REQUIREMENTS))
	touch $@

# tinyshakespeare token shards (input.txt from LLMC_DATA when present, else downloaded)
data: $(TS_DIR)/tiny_shakespeare_val.bin
$(TS_DIR)/tiny_shakespeare_val.bin: | $(VENV_STAMP)
	$(PY) dev/data/tinyshakespeare.py $(if $(TS_INPUT),--input $(TS_INPUT))

# GPT-2 124M when its weights can be downloaded, otherwise a seeded random-init d12
model: data
	@if [ ! -f gpt2_124M.bin ] && [ ! -f gpt2_d12.bin ]; then \
	  $(PY) train_gpt2.py --model gpt2 --num_iterations 0 || \
	  { echo "GPT-2 124M unavailable: writing a random-init d12 instead"; \
	    $(PY) train_gpt2.py --model d12 --num_iterations 0; }; fi

train: model
	@m=$$([ -f gpt2_124M.bin ] && echo gpt2_124M || echo gpt2_d12); \
	if [ "$(DEVICE)" = cuda ]; then set -x; $(PY) train_gpt2cu.py -b 4 -t 1024 -e $${m}_bf16.bin; \
	else set -x; $(PY) train_gpt2cu.py --device cpu -b 4 -t 64 -x 40 -l 1e-4 -e $$m.bin; fi

# every kernels_cu file through NVRTC for sm_80 and sm_90 in bf16 and fp32; no GPU needed
check-kernels: $(VENV_STAMP)
	$(PY) dev/check_kernels.py

test: check-kernels
	$(PY) -m pytest -q tests

# ms/step, tok/s and MFU of d12 (GPT-2 124M when present): bf16 at -t 1024 on a GPU, fp32 at -t 64 on the CPU
BENCH_B ?= 4
BENCH_T ?= $(if $(filter cuda,$(DEVICE)),1024,64)
bench: model
	@m=$$([ -f gpt2_124M.bin ] && echo gpt2_124M || echo gpt2_d12); \
	if [ "$(DEVICE)" = cuda ]; then set -x; $(PY) dev/bench.py --device cuda -e $${m}_bf16.bin -b $(BENCH_B) -t $(BENCH_T); \
	else set -x; $(PY) dev/bench.py --device cpu -e $$m.bin -b $(BENCH_B) -t $(BENCH_T); fi

# every GPU check in one command, for the GPU machine (dev/gpu/check.sh; STEPS="kernels model" runs a subset)
gpu-check:
	bash dev/gpu/check.sh $(STEPS)

clean:
	rm -rf $(VENV) .fixtures .pytest_cache
