# The two commands of the README: `make train` and `make test`. Each creates .venv on first use.
# Extra arguments go through ARGS, e.g. make train ARGS="--preset tiny --data FILE".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: train sample test lint bench clean-venv

train: $(VENV)/.runtime
	$(BIN)/python train.py $(ARGS)

sample: $(VENV)/.runtime
	$(BIN)/python sample.py $(ARGS)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install -r requirements-dev.txt
	touch $@

clean-venv:
	rm -rf $(VENV)
