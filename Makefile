# The two commands of the README. Each sets up what is missing (scripts/setup.sh), then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_output

.PHONY: demo test setup benchmark clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/napari-patchdiff demo --out $(DEMO_OUT) --overwrite

test: setup
	$(PY) -m pytest

benchmark: setup
	$(PY) benchmarks/classical.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
