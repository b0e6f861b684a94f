# The README's two commands: `make demo` and `make test`. Both set everything up first (scripts/setup.sh).
PY := .venv/bin/python
RUN_DIR ?= runs/fmnist_generalist_$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test lint

setup:
	@bash scripts/setup.sh

# Generalist on Fashion-MNIST on the CPU (about 6 minutes on 2 cores once set up): 4 epochs on the preset's 10,000
# images with the study's schedule shape (PGD-7, linear lr decay, no crop/flip, every-step sync from 5/8 of the
# run), then clean / PGD-20 / CW-20 / AutoAttack accuracy on 50 test points (networks with identical weights once).
demo: setup
	$(PY) -m generalist_trainer train --config configs/fashion_mnist_generalist.yaml train.epochs=4 \
		train.out_dir=$(RUN_DIR)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check generalist_trainer kernels trainer bench tests
