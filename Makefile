# Every target makes and uses its own virtual environment (.venv); nothing relies on a hand install.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
CORPUS   ?=
PRESET   ?= small
RUN_DIR  ?= runs/charlm
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test bench-train clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

# Gets the corpus (CORPUS=path, or tiny-shakespeare downloaded and checked), trains, and resumes the run
# in RUN_DIR instead of starting over if a backup of it is there.
train: setup
	$(PY) -m training.train $(if $(CORPUS),--corpus $(CORPUS)) --preset $(PRESET) --run-dir $(RUN_DIR) \
		$(if $(wildcard $(RUN_DIR)/backup.npz),--resume) $(TRAIN_ARGS)

# pytest exits 5 when it collects no tests; make fails on any non-zero exit, so that is a failure too.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench-train: setup
	$(PY) -m benchmarks.bench_train

clean:
	rm -rf $(VENV) .pytest_cache
