# sora-mini: `make demo`, `make test`, `make lab`. Everything runs inside ./.venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lab bench clean

# Create the venv and install the package with its notebook and dev extras, once per
# change of pyproject.toml.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sora-mini needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[notebooks,dev]"
	touch $(STAMP)

install: $(STAMP)

# The course's main job: prompts -> videos with the shipped tiny model, and an HTML page.
demo: $(STAMP)
	$(BIN)/python -m sora_mini demo --model tiny --out outputs

# Every test, notebooks included (executed top to bottom in fast mode).
test: $(STAMP)
	$(BIN)/python -m pytest

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_vae.py
	$(BIN)/python benchmarks/bench_dit.py
	$(BIN)/python benchmarks/bench_train_dit.py
	$(BIN)/python benchmarks/bench_sampling.py

clean:
	rm -rf $(VENV) outputs data/shapes_world
