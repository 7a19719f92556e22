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
# TensorFlow's C++ start-up chatter (CUDA probes, CPU flags) hides the progress bar; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup train export sample test bench bench-train bench-generate bench-serve serve report clean k8s-tools images deploy undeploy

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
test: setup k8s-tools
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

# --- Deploying (docs/deploy.md) ---------------------------------------------------------------------------------
# The deploy checks' tools (kubectl with its kustomize, kubernetes-validate, checkov) live in their own virtual
# environment: their dependency pins would fight TensorFlow's. tests/test_k8s_*.py use it; `make test` builds it.
K8S_VENV       := .venv-k8s
IMAGE_REGISTRY ?= registry.example.com/charlm
IMAGE_TAG      ?= 0.1.0
DOCKER         ?= docker
K8S_OVERLAY    ?= k8s/overlays/prod
# Your kubectl (and its kubeconfig) if there is one, else the tools environment's.
KUBECTL        ?= $(if $(shell command -v kubectl),kubectl,$(K8S_VENV)/bin/kubectl)

k8s-tools: $(K8S_VENV)/.installed

$(K8S_VENV)/.installed: k8s/requirements-tools.txt
	test -x $(K8S_VENV)/bin/python || $(PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r k8s/requirements-tools.txt
	touch $@

# The gateway and training images (needs a Docker engine); push them to IMAGE_REGISTRY before deploying.
images:
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_REGISTRY)/gateway:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/train.Dockerfile -t $(IMAGE_REGISTRY)/train:$(IMAGE_TAG) .

# TF Serving, the gateway and their volumes into the cluster of the current kubectl context.
deploy:
	$(KUBECTL) apply -k $(K8S_OVERLAY)

# Everything deploy made except the namespace and the model and run volumes (label charlm.io/retain);
# `$(KUBECTL) delete -k $(K8S_OVERLAY)` removes those too, and with them every model version.
undeploy:
	$(KUBECTL) delete -k $(K8S_OVERLAY) -l 'charlm.io/retain!=true' --ignore-not-found
