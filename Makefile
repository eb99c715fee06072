# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
# The .venv gets the exact versions of constraints.txt; users of the package get pyproject's ranges.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
# Optional dependency groups of pyproject.toml installed into .venv: add a group here when it is
# defined there (e.g. `export`, `energy`), comma-separated.
EXTRAS ?= test,energy,export,plots,digits

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q -c $(CONSTRAINTS) --no-deps 'spikingjelly==2.0.*'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spikingresformer train -c configs/digits.yaml --output runs/digits-demo --energy false --overwrite true
	$(VENV)/bin/spikingresformer evaluate -c configs/digits.yaml --output runs/digits-demo \
		--checkpoint runs/digits-demo/best.safetensors --progress false

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/step.py --model spikingresformer_cifar --batch-size 16 --T 4 --img-size 32

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache
