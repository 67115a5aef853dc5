# Two entry points for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch is pinned: plain `torch` pulls several GB of CUDA wheels; 2.13.0 is the CPU build.
# auto_LiRPA 0.3 (the only PyPI release) pins torch<1.13 in its metadata, so it goes in
# with --no-deps; pytest_latentaudit.engines.lirpa_compat patches it for torch 2.x.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps auto_LiRPA==0.3
	touch $@

# The example suites (sprites, digits): proved tests, strict-xfail known violations with
# counterexample strips, the spec sheet, JUnit XML and the HTML report under $(OUT)/.
demo: setup
	$(BIN)/python -m pytest examples -p no:cacheprovider -o testpaths= \
		--latent-spec-sheet $(OUT)/spec-sheet.json --junitxml $(OUT)/junit.xml \
		--latent-report $(OUT)/report.html
	$(BIN)/latentaudit show $(OUT)/spec-sheet.json

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
