# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing and
# are quick once installed (the stamp file is only rebuilt when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision go in first with exact pins so pip never resolves another (multi-GB) torch.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo lint bench clean-results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

test: install
	GRADIO_ANALYTICS_ENABLED=False RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	GRADIO_ANALYTICS_ENABLED=False RAY_USAGE_STATS_ENABLED=0 $(PY) -m rayjobs.demo $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# The benches that stand alone (personalization_rescore and _ceiling judge finished runs: bench/README.md).
BENCHES = scoring crop_quality algorithms pairs_curve pair_choice personalization round_time scale

bench: install
	for b in $(BENCHES); do $(PY) bench/$$b.py || exit 1; done
