# One venv, created on demand; every target works on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install test test-fast quickstart bench calibration gpu-check gpu-carry
install: $(VENV)/.installed

test: install            ## every test, slow integration tests included (what CI runs)
	$(PY) -m pytest -q

test-fast: install       ## unit tests only
	$(PY) -m pytest -q -m "not slow"

quickstart: install      ## the offline quickstart study: local Ray, local MLflow store
	$(VENV)/bin/akd-ray tune studies/quickstart.yaml

SIZE ?= cpu
bench: install           ## one trial's cost vs the naive loop, and Ray's per-trial overhead (SIZE=gpu on an H100/H200)
	$(PY) bench/bench.py --size $(SIZE) --out akd-results/bench/bench-$(SIZE).json
	$(PY) bench/ray_overhead.py --out akd-results/bench/ray-overhead.json

STUDY_DIR ?= akd-results/quickstart
calibration: install     ## the verdict's measured coverage and error rates, simulated from a finished study's predictions (run make quickstart first)
	$(PY) bench/calibration.py $(STUDY_DIR) --out akd-results/bench/calibration.json

# On a GPU machine there is no venv and no internet: PYTHON is its python3 with the carried wheels on
# PYTHONPATH (see README "Speed"). DEVICE=cpu: the same steps shrunk onto the CPU (what CI runs).
PYTHON ?= python3
DEVICE ?= cuda
GPU_OUT ?= akd-results/gpu-check
gpu-check:               ## GPU tests, bench --size gpu, SST-2 tokens/s + MFU, quick-study estimate -> $(GPU_OUT)/gpu-check.json
	$(PYTHON) bench/gpu_check.py $(if $(filter cpu,$(DEVICE)),--dry-run) --out $(GPU_OUT)

gpu-carry:               ## here, before a device call: .carry/ (SST-2, MiniLM config) and what each call carries
	$(PYTHON) bench/gpu_check.py --prepare-carry
