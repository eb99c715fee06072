# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,energy,export]"
	$(PY) -m pip install -q --no-deps 'spikingjelly==2.0.*'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/spikingresformer train -c configs/digits.yaml --output runs/digits-demo --energy false
	$(VENV)/bin/spikingresformer evaluate -c configs/digits.yaml --output runs/digits-demo \
		--checkpoint runs/digits-demo/best.safetensors --progress false

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/step.py --model spikingresformer_cifar --batch-size 16 --T 4 --img-size 32

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache
