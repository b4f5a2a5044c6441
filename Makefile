# Two commands set everything up on a fresh machine with Python 3.11+:
#   make book   build the course website into _build/html (the main job)
#   make test   run every test
# Both create .venv and install the pinned dependencies first when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# nbgrader runs the `alembic` executable, and notebooks look for `jupyter`:
# the environment's bin goes first on PATH for every recipe.
export PATH := $(BIN):$(PATH)
# Frameworks stay quiet and offline.
export TF_CPP_MIN_LOG_LEVEL := 3
export KERAS_BACKEND := tensorflow
export PYTHONHASHSEED := 0

.PHONY: book test bench env lock clean

book: $(STAMP)
	$(BIN)/jupyter-book build -W -n --keep-going .

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_batchnorm.py

env: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate the full lock after changing requirements.txt.
lock: $(STAMP)
	( echo '# Full lock of the environment (pip freeze); regenerate with `make lock`.'; \
	  echo '# torch is pinned in requirements.txt (its local version tag +cpu is not on every index).'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' ) > constraints.txt

clean:
	rm -rf _build $(VENV) .pytest_cache .hypothesis
