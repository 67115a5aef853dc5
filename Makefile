# Two entry points for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out
# torch: what to install and from where. TORCH_INDEX empty = pip's configured index (PyPI's
# plain torch==2.13.0 is the CUDA build on Linux x86_64, several GB); for the CPU wheels:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# pytest-xdist workers for `make test` (auto = one per core; 0 = no xdist)
WORKERS ?= auto

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch 2.13 has wheels for Python 3.10+ only: check first, with a message that says so.
# auto_LiRPA 0.3 (the only PyPI release) pins torch<1.13 in its metadata, so it goes in
# with --no-deps; pytest_latentaudit.engines.lirpa_compat patches it for torch 2.x.
$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else \
		"pytest-latentaudit needs Python 3.10+ (found %s); run make PYTHON=python3.1x" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
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
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS))

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
