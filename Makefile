# Every target installs what it needs into .venv/ first (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pinned first so that a CPU machine never resolves torch to a CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test test-slow test-all bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The main job on the embedded benchmark.
demo: $(STAMP)
	$(PY) sweep/run.py --space kl_beta

# The default suite (slow tests excluded); `make test-all` adds them.
test: $(STAMP)
	$(PY) -m pytest -q

# The slow tests alone (cluster, kill-and-resume, long sweeps); CI runs them after `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

BENCHES := trainer_throughput sweep_utilization warmup_once pruning_pays big_data end_to_end aa_check pruning_fidelity

bench: $(STAMP)
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis
