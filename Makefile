# The two commands of the README: `make train` and `make test`. Each creates .venv on first use.
# Extra arguments go through ARGS, e.g. make train ARGS="--preset tiny --data FILE".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: help train sample test lint clean-venv constraints gpu-prep gpu-check gpu-ab-base test-gpu-versions FORCE

# A bare `make` lists the targets: it neither installs anything nor starts a 5,000-step run.
help:
	@echo "make train     # creates .venv, runs python train.py (ARGS=\"--preset tiny --data FILE\")"
	@echo "make sample    # runs python sample.py (ARGS=\"--ckpt checkpoints/RUN --prompt '...'\")"
	@echo "make test      # creates .venv with the dev tools, runs ruff and pytest (ARGS=\"-k parity\")"
	@echo "make lint      # ruff alone"
	@echo "other targets: clean-venv, constraints, gpu-prep, gpu-check, gpu-ab-base, test-gpu-versions (README)"

train: $(VENV)/.runtime
	$(BIN)/python train.py $(ARGS)

sample: $(VENV)/.runtime
	$(BIN)/python sample.py $(ARGS)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .

# (a .venv made by another Python is kept: one older than 3.11 is refused at once, with the way out)
$(VENV)/.runtime: requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: $(VENV) has $$($(BIN)/python -V 2>/dev/null || echo 'a python that does not run')," \
		"and this project needs Python 3.11 or later; make clean-venv, then make PYTHON=python3.11" \
		"(or another 3.11+)" >&2; exit 1; }
	$(BIN)/pip install -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install -r requirements-dev.txt -c constraints.txt
	touch $@

clean-venv:
	rm -rf $(VENV)

# constraints.txt, refrozen after a requirements file changes: the requirements alone (not under the
# old constraints) in a fresh environment, every package but pip (setuptools too: torch needs it),
# torch without its build label (+cpu, +cu130: any build of the version satisfies it).
constraints:
	rm -rf .venv-freeze && $(PYTHON) -m venv .venv-freeze
	.venv-freeze/bin/pip install -r requirements.txt -r requirements-dev.txt
	{ grep '^#' constraints.txt; .venv-freeze/bin/pip freeze --all | grep -v '^pip==' \
		| sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt && rm -rf .venv-freeze

# The GPU check (README, "GPU"). On this machine: `make gpu-prep` puts the data and the wheels the GPU
# machine lacks (datasets and its two dependencies, for Python 3.12; its image has the rest) into
# git-ignored folders; carry gpu-data and .whl there and run `make gpu-check`, which installs them (it
# stops at once, in one line, where python3 is not 3.12) and runs scripts/gpu_check.py (about 12
# minutes on one H200: run ARGS="--only train,model --deadline 450", then at once ARGS="--only sample
# --deadline 280", or budget_left_s (the device tool's status) less 50 where that is less, with a
# timeout_s of the deadline plus 30; --deadline stops it in time with its files written), writing
# img/gpu/, or $OUT where the device tool sets it (only what is written there comes back).
# (copies writable: the shared files are read-only, and a copy of their mode failed a second run)
TEXTS := ../shared/data/tinystories/train-lower.txt ../shared/data/tinystories/valid-lower.txt
gpu-prep:
	@for f in $(TEXTS); do [ -f $$f ] || { echo "gpu-prep: $$f is missing; clone this project beside" \
		"the shared folder (../shared), or copy the two texts into gpu-data/ yourself" >&2; exit 1; }; done
	mkdir -p gpu-data && install -m 644 $(TEXTS) gpu-data/
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19

gpu-check:
	@if [ -d .whl ] && ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then \
		echo "gpu-check: .whl holds wheels for Python 3.12 (make gpu-prep), but python3 is $$(python3 -V 2>&1);" \
			"run it on the GPU machine, or remove .whl (only the check's train part needs them)" >&2; \
		exit 1; fi
	if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target /tmp/site .whl/*.whl || echo "gpu-check: warning: the wheels in .whl did not install;" \
		"a check without its train part goes on, one with it stops (it needs datasets)" >&2; fi
	PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py $(if $(OUT),--out $(OUT)) $(ARGS)

# A commit's tree for an A/B on the GPU machine, which gets the checkout without its history:
# `make gpu-ab-base BASE=<commit>` writes it to gpu-data/ab-base (carried with gpu-data), and there
# python3 scripts/ab_trees.py gpu-data/ab-base . --device cuda --variants moe:32,moe:128 --out $OUT/ab.json
gpu-ab-base:
	@[ -n "$(BASE)" ] || { echo "gpu-ab-base: name the commit to compare against: make gpu-ab-base BASE=<commit>" >&2; exit 1; }
	git rev-parse -q --verify "$(BASE)^{commit}" >/dev/null || { echo "gpu-ab-base: $(BASE) is no commit here;" \
		"name one that git log lists" >&2; exit 1; }
	rm -rf gpu-data/ab-base.tmp gpu-data/ab-base.tar && mkdir -p gpu-data/ab-base.tmp
	git archive -o gpu-data/ab-base.tar "$(BASE)" && tar -x -C gpu-data/ab-base.tmp -f gpu-data/ab-base.tar
	rm -rf gpu-data/ab-base gpu-data/ab-base.tar && mv gpu-data/ab-base.tmp gpu-data/ab-base

# The tests under the versions a lent GPU machine has (torch 2.11, transformers 5.17, huggingface-hub
# 1.33 and Python 3.12, where this machine has python3.12; KINDS.md in the device tool's folder), on
# this machine's CPU, before a lease is spent on them: torch.compile in 2.11 once zeroed every gradient
# through the loss that 2.13 takes right (model.py, LinearCrossEntropy), which only a compiled run on
# 2.11 shows. The other packages are constraints.txt's. It downloads torch's CUDA build with its
# libraries (about 4.5 GB) into .venv-gpu (git-ignored), again when GPU_PYTHON or GPU_VERSIONS change.
# ARGS narrows the run (a test file, -k); by default the suite.
GPU_VERSIONS := torch==2.11.0 transformers==5.17.0 huggingface-hub==1.33.0
GPU_PYTHON ?= $(shell python3.12 -V >/dev/null 2>&1 && echo python3.12 || echo $(PYTHON))
GPU_SETTINGS = $(shell $(GPU_PYTHON) -V 2>&1) $(GPU_VERSIONS)
test-gpu-versions: .venv-gpu/.done
	.venv-gpu/bin/python -m pytest $(ARGS)

.venv-gpu/settings: FORCE  # rewritten (so that the environment is remade) only when the settings change
	@mkdir -p .venv-gpu && [ "$$(cat $@ 2>/dev/null)" = "$(GPU_SETTINGS)" ] || echo "$(GPU_SETTINGS)" > $@

.venv-gpu/.done: .venv-gpu/settings requirements.txt requirements-dev.txt constraints.txt
	rm -rf .venv-gpu && $(GPU_PYTHON) -m venv .venv-gpu
	grep -v -i -e '^torch==' -e '^transformers==' -e '^huggingface[-_]hub==' -e '^setuptools==' \
		constraints.txt > .venv-gpu/constraints.txt
	grep -h -v -e '^torch==' -e '^transformers==' requirements.txt requirements-dev.txt > .venv-gpu/requirements.txt
	.venv-gpu/bin/pip install $(GPU_VERSIONS) -r .venv-gpu/requirements.txt -c .venv-gpu/constraints.txt
	echo "$(GPU_SETTINGS)" > .venv-gpu/settings
	touch $@

FORCE:
