# The README's two commands: `make demo` and `make test`. Both set everything up first (scripts/setup.sh).
PY := .venv/bin/python
RUN_DIR ?= runs/fmnist_generalist_$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test lint

setup:
	@bash scripts/setup.sh

# Generalist on Fashion-MNIST on the CPU (about 10 minutes on 2 cores): trains, then prints clean /
# PGD-20 / CW-20 / AutoAttack accuracy of the global model and both experts on 50 test points.
# The table's preset trains on 10,000 images; the demo on 6,000 (about 2 s per step on 2 cores).
demo: setup
	$(PY) -m generalist_trainer train --config configs/fashion_mnist_generalist.yaml data.train_subset=6000 \
		train.out_dir=$(RUN_DIR)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check generalist_trainer kernels trainer bench tests
