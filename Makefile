# Every target makes and uses its own virtual environment (.venv); nothing relies on a hand install.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
CORPUS   ?=
PRESET   ?= small
RUN_DIR  ?= runs/charlm
MODEL_NAME ?= charlm
EXPORT_DIR ?= exported_models
SAMPLE_ARGS ?= --prime "ROMEO:" --length 1000 --temperature 0.8
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train export sample test bench bench-train bench-generate bench-serve serve report clean

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
	$(PY) -m training.export --run-dir $(RUN_DIR) --export-dir $(EXPORT_DIR) --model-name $(MODEL_NAME) --if-changed

# A new version of RUN_DIR's best weights, whether or not they changed.
export: setup
	$(PY) -m training.export --run-dir $(RUN_DIR) --export-dir $(EXPORT_DIR) --model-name $(MODEL_NAME)

sample: setup
	$(PY) -m training.sample --model $(EXPORT_DIR)/$(MODEL_NAME) $(SAMPLE_ARGS)

# pytest exits 5 when it collects no tests; make fails on any non-zero exit, so that is a failure too.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: bench-train bench-generate bench-serve

bench-train: setup
	$(PY) -m benchmarks.bench_train

bench-generate: setup
	$(PY) -m benchmarks.bench_generate

bench-serve: setup
	$(PY) -m benchmarks.bench_serve

# The gateway on 127.0.0.1:8000 (or $$PORT on all interfaces), serving the newest version in CHARLM_MODEL_DIR
# and picking up newer ones; other CHARLM_* settings come from the environment (docs/serving.md).
CHARLM_MODEL_DIR ?= $(EXPORT_DIR)/$(MODEL_NAME)
serve: setup
	CHARLM_MODEL_DIR=$(CHARLM_MODEL_DIR) $(VENV)/bin/gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()'

clean:
	rm -rf $(VENV) .pytest_cache

# The paper's analyses of the newest exported version (after `make train`) on the corpus it was trained on:
# $(REPORT_DIR)/report.html with its figures, and report.json. A few minutes on 2 CPU cores.
REPORT_TEXT ?= $(if $(CORPUS),$(CORPUS),data/tinyshakespeare.txt)
REPORT_DIR  ?= reports/$(MODEL_NAME)
REPORT_ARGS ?=
report: setup
	$(PY) -m analysis.report --model $(EXPORT_DIR)/$(MODEL_NAME) --text $(REPORT_TEXT) --out $(REPORT_DIR) $(REPORT_ARGS)
