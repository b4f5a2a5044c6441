# Two commands set everything up on a fresh machine with Python 3.11+:
#   make book   build the course website into _build/html (the main job)
#   make test   build the website, then run every test, the page tests in a
#               browser included (CI runs this, from a fresh clone)
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
export TF_ENABLE_ONEDNN_OPTS := 0
export PYTHONHASHSEED := 0

.PHONY: book book-timing wheel browser postgres lint test test-fast bench grade grade-sample formgrader release env lock clean

# Warnings and broken references are errors. Executed notebook outputs are
# cached in _build/.jupyter_cache: an unchanged page is not run again.
# The learner's wheel is built first: the site serves it (wheels/, html_extra_path).
book: $(STAMP) wheel
	$(BIN)/jupyter-book build -W -n --keep-going .

# The learner's package, one pure-Python wheel of bnlib and bncheck (numpy its
# only dependency; no grading code, no solutions), built offline by
# learner/build.py from learner/pyproject.toml:
# _build/learner/wheels/bnlib_course-0.1.0-py3-none-any.whl
wheel: $(STAMP)
	$(BIN)/python learner/build.py

# Cold build (fresh folder, no cache) against an unchanged rebuild.
book-timing: $(STAMP)
	$(BIN)/python scripts/build_timing.py

# The page tests (tests/test_site.py) open the built site in Debian's
# chromium. Install it when it is missing and we can (root with apt-get);
# otherwise say so: those tests then skip, or fail when CI is set.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "browser: $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: installing Debian's chromium with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	    || { echo "browser: apt-get install chromium failed"; [ -z "$$CI" ] || exit 1; }; \
	else \
	  echo "browser: chromium is missing and cannot be installed here (needs root and apt-get);"; \
	  echo "         the page tests will skip (under CI they fail)"; \
	fi

# The cluster tests (tests/test_grading_cluster.py, tests/test_cluster_infra.py) start a
# throwaway PostgreSQL server with Debian's server programs (initdb, pg_ctl, postgres), found in
# `pg_config --bindir` or /usr/lib/postgresql/*/bin (never through PATH: /usr/local/bin links are
# not on every machine). Install Debian's postgresql when they are missing and we can (root with
# apt-get); otherwise say so: those tests then skip, and under CI this target fails.
PG_BINDIR = $$( { pg_config --bindir 2>/dev/null; ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r; } \
	| while read d; do [ -x "$$d/initdb" ] && [ -x "$$d/pg_ctl" ] && [ -x "$$d/postgres" ] && { echo "$$d"; break; }; done )
postgres:
	@bindir=$(PG_BINDIR); \
	if [ -n "$$bindir" ]; then \
	  echo "postgres: $$bindir ($$("$$bindir/postgres" --version))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "postgres: installing Debian's postgresql with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
	    || { echo "postgres: apt-get install postgresql failed"; [ -z "$$CI" ] || exit 1; }; \
	  bindir=$(PG_BINDIR); \
	  if [ -n "$$bindir" ]; then echo "postgres: $$bindir"; \
	  else echo "postgres: installed, but initdb, pg_ctl and postgres are still not found"; [ -z "$$CI" ] || exit 1; fi; \
	else \
	  echo "postgres: PostgreSQL is missing and cannot be installed here (needs root and apt-get);"; \
	  echo "          the cluster tests will skip (under CI they fail)"; \
	  [ -z "$$CI" ] || exit 1; \
	fi

# Lint with ruff (configured in pyproject.toml; CI runs this before the tests).
# Only `ruff check`: the code is not in ruff-format style, and is not reformatted.
lint: $(STAMP)
	$(BIN)/ruff check .

# The tests include the built site: build it first (from scratch on a fresh
# clone, from the execution cache afterwards).
test: book browser postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while editing: bnlib and framework tests on two workers, without
# the end-to-end grading (real nbgrader and kernels), the browser page tests and the
# PostgreSQL/Dask cluster tests (markers set in tests/conftest.py), and without the
# notebooks in solutions/.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 -m "not grading and not site and not cluster" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_batchnorm.py

# Autograde a class: make grade SUBMISSIONS=folder-or-lms.zip [GRADE_ARGS="--roster ids.txt"]
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=folder-or-zip [GRADE_ARGS=...]"; exit 2; }
	$(BIN)/python -m grading "$(SUBMISSIONS)" $(GRADE_ARGS)

# Try the grading command at once on the shipped sample class (messy on purpose).
grade-sample: $(STAMP)
	$(BIN)/python -m grading.samples _grading/sample-submissions
	$(BIN)/python -m grading _grading/sample-submissions

# Grade written answers by hand: nbgrader's formgrader on 127.0.0.1 with a token, in the graded course folder.
formgrader: $(STAMP)
	$(BIN)/python -m grading formgrader $(or $(COURSE),_grading)

# Regenerate the student versions in release/ from solutions/ (commit the result).
release: $(STAMP)
	$(BIN)/python -c "from grading import course as C; C.generate(C.api(C.PROJECT))"

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
