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
# Recipes run in bash: the TensorFlow programs' stderr goes through a filter (`tf`, below).
SHELL    := /bin/bash

# --- TensorFlow's start-up notices (measured, and checked by tests/test_quiet_startup.py). Without a GPU, TensorFlow
# 2.21 prints "E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)" at the first tensor, and when its libraries
# load (twice) absl's "WARNING: All log messages before absl::InitializeLog() ..." and the I0000 lines "oneDNN custom
# operations are on ..." and "cudart_stub.cc ... Could not find cuda drivers on your machine ...".
# - TF_CPP_MIN_LOG_LEVEL=3 (FATAL only; 2 keeps ERROR) removes the cuInit line and any later C++ log line.
#   TensorFlow's errors still reach you as Python exceptions; tracebacks and the programs' own messages are untouched.
# - No variable reaches the other lines: static constructors (threadpool_device.cc, the CUDA stub) log them before
#   TensorFlow's logging initialiser reads TF_CPP_MIN_LOG_LEVEL, and absl reads no environment. TF_ENABLE_ONEDNN_OPTS=0
#   drops the oneDNN line only by turning oneDNN off (training measured 1.2-2.3x slower); =1 and CUDA_VISIBLE_DEVICES
#   change nothing. So `tf` drops exactly those lines (TF_STARTUP_NOTICES) from the programs' stderr.
# `make train TF_CPP_MIN_LOG_LEVEL=0` shows all of TensorFlow's log, these lines included.
export TF_CPP_MIN_LOG_LEVEL ?= 3
TF_STARTUP_NOTICES ?= $(if $(filter 0,$(TF_CPP_MIN_LOG_LEVEL)),,$(TF_STARTUP_NOTICE_LINES))
TF_STARTUP_NOTICE_LINES := ^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR
TF_STARTUP_NOTICE_LINES := $(TF_STARTUP_NOTICE_LINES)|I[0-9]{4} [0-9:.]+ +[0-9]+ (port\.cc:[0-9]+\] oneDNN custom
TF_STARTUP_NOTICE_LINES := $(TF_STARTUP_NOTICE_LINES) operations are on\.|cudart_stub\.cc:[0-9]+\] Could not find
TF_STARTUP_NOTICE_LINES := $(TF_STARTUP_NOTICE_LINES) cuda drivers on your machine, GPU will not be used\.))
# $(call tf,COMMAND): prints COMMAND (unless make -s), then runs it with the lines TF_STARTUP_NOTICES matches dropped
# from its stderr; all else it prints, and its exit status, pass through. The filter ignores Ctrl-C and ends when
# COMMAND closes its stderr; the recipe waits for it, so COMMAND's last lines come before make's own.
tf = $(if $(findstring s,$(firstword -$(MAKEFLAGS))),,printf '%s\n' $(call quote,$(strip $(1)));) \
	$(if $(TF_STARTUP_NOTICES),{ $(1); } \
	2> >(trap '' INT TERM; exec grep --line-buffered -vE $(call quote,$(TF_STARTUP_NOTICES)) >&2); \
	status=$$?; wait $$!; exit $$status,$(1))
quote = '$(subst ','\'',$(1))'

.PHONY: setup browser train export sample sweep test bench bench-matmul bench-train bench-generate bench-serve soak serve report corpus-linux corpus-warandpeace clean k8s-tools images deploy undeploy

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

# Gets the corpus (CORPUS=path, or tiny-shakespeare downloaded and checked), trains, and resumes the run
# in RUN_DIR instead of starting over if a backup of it is there.
train: setup
	@$(call tf,$(PY) -m training.train $(if $(CORPUS),--corpus $(CORPUS)) --preset $(PRESET) --run-dir $(RUN_DIR) \
		$(if $(wildcard $(RUN_DIR)/backup.npz),--resume) $(TRAIN_ARGS))
	@$(call tf,$(PY) -m training.export --run-dir $(RUN_DIR) --export-dir $(EXPORT_DIR) --model-name $(MODEL_NAME) --if-changed)

# A new version of RUN_DIR's best weights, whether or not they changed.
export: setup
	@$(call tf,$(PY) -m training.export --run-dir $(RUN_DIR) --export-dir $(EXPORT_DIR) --model-name $(MODEL_NAME) $(EXPORT_ARGS))

sample: setup
	@$(call tf,$(PY) -m training.sample --model $(EXPORT_DIR)/$(MODEL_NAME) $(SAMPLE_ARGS))

# The paper's Table 1 (docs/sweep.md): every configuration of GRID (tiny | small | paper) trained in turn on CORPUS
# (tiny-shakespeare when not given), then SWEEP_DIR/table.md, table.json, figure.png. Run it again after a kill: done
# configurations are skipped, the interrupted one resumes. Exits non-zero if a configuration failed.
GRID      ?= small
SWEEP_DIR ?= runs/sweep-$(GRID)
sweep: setup
	@$(call tf,$(PY) -m training.sweep run --grid $(GRID) --sweep-dir $(SWEEP_DIR) $(if $(CORPUS),--corpus $(CORPUS)))

# pytest exits 5 when it collects no tests; make fails on any non-zero exit, so that is a failure too.
# `browser` comes first: a machine that cannot get Chromium stops before a venv is built or a test runs.
test: browser setup k8s-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# Headless Chromium and ChromeDriver for the browser tests (tests/browser.py), which fail without them. Nothing to do
# when both are there; as root with apt-get, Debian's packages are installed; otherwise make stops, saying how.
CHROMIUM         ?= /usr/bin/chromium
CHROMEDRIVER     ?= /usr/bin/chromedriver
BROWSER_PACKAGES := chromium chromium-driver
APT_GET          ?= apt-get
BROWSER_INSTALL  := apt-get update && apt-get install -y $(BROWSER_PACKAGES)
test: export CHARLM_CHROMIUM = $(CHROMIUM)
test: export CHARLM_CHROMEDRIVER = $(CHROMEDRIVER)
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null; then \
		echo "make test: installing headless Chromium for the browser tests: $(BROWSER_INSTALL)"; \
		$(APT_GET) update && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y $(BROWSER_PACKAGES); \
		if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	fi; \
	echo "make test: the browser tests need headless Chromium ($(CHROMIUM), $(CHROMEDRIVER)). Install it as" \
		"root: $(BROWSER_INSTALL) (make test does that itself when run as root on Debian), or name yours:" \
		"make test CHROMIUM=path CHROMEDRIVER=path" >&2; \
	exit 1

bench: bench-matmul bench-train bench-generate bench-serve

bench-matmul: setup
	@$(call tf,$(PY) -m benchmarks.bench_matmul)

bench-train: setup
	@$(call tf,$(PY) -m benchmarks.bench_train)

bench-generate: setup
	@$(call tf,$(PY) -m benchmarks.bench_generate)

bench-serve: setup
	@$(call tf,$(PY) -m benchmarks.bench_serve)

# The gateway under 10,000 mixed and hostile requests from 120 clients (hang-ups, malformed bodies, tampered states,
# slow readers), local backend then through the TF Serving stand-in; stops by itself (at most 30 minutes per backend),
# figures appended to docs/results.md, non-zero exit if a check failed (benchmarks/soak.py says which).
# A quick one: make soak SOAK_ARGS="--requests 200 --clients 10 --hidden 64 --layers 1 --no-record".
SOAK_ARGS ?=
soak: setup
	@$(call tf,$(PY) -m benchmarks.soak $(SOAK_ARGS))

# The gateway on 127.0.0.1:8000 (or $$PORT on all interfaces), serving the newest version in CHARLM_MODEL_DIR
# and picking up newer ones; other CHARLM_* settings come from the environment (docs/serving.md).
CHARLM_MODEL_DIR ?= $(EXPORT_DIR)/$(MODEL_NAME)
serve: setup
	@$(call tf,CHARLM_MODEL_DIR=$(CHARLM_MODEL_DIR) $(VENV)/bin/gunicorn -c serving/gunicorn.conf.py 'serving.app:create_app()')

clean:
	rm -rf $(VENV) .pytest_cache

# The paper's analyses of the newest exported version (after `make train`) on the corpus it was trained on:
# $(REPORT_DIR)/report.html with its figures, and report.json. A few minutes on 2 CPU cores.
REPORT_TEXT ?= $(if $(CORPUS),$(CORPUS),data/tinyshakespeare.txt)
REPORT_DIR  ?= reports/$(MODEL_NAME)
REPORT_ARGS ?=
report: setup
	@$(call tf,$(PY) -m analysis.report --model $(EXPORT_DIR)/$(MODEL_NAME) --text $(REPORT_TEXT) --out $(REPORT_DIR) $(REPORT_ARGS))

# The paper's Linux corpus (docs/analysis.md), into data/ (never committed): ~6.2M characters of the kernel's .c/.h
# files, shuffled with a fixed seed, from Debian's linux-source-6.1 tarball (installed as root with apt-get, as
# `browser` installs Chromium; otherwise make stops, saying how) or KERNEL_SRC=a kernel directory or tarball.
# Then: make train CORPUS=data/linux-kernel.txt, make report CORPUS=data/linux-kernel.txt.
KERNEL_SRC     ?=
KERNEL_TARBALL := /usr/src/linux-source-6.1.tar.xz
KERNEL_INSTALL := apt-get update && apt-get install -y --no-install-recommends linux-source-6.1
CORPUS_ARGS    ?=
corpus-linux: setup
	@if [ -z "$(KERNEL_SRC)" ] && [ ! -f $(KERNEL_TARBALL) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null; then \
			echo "make corpus-linux: installing the kernel source: $(KERNEL_INSTALL)"; \
			$(APT_GET) update && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y --no-install-recommends \
				linux-source-6.1; \
		fi; \
		if [ ! -f $(KERNEL_TARBALL) ]; then \
			echo "make corpus-linux: needs the kernel source, $(KERNEL_TARBALL). Install it as root:" \
				"$(KERNEL_INSTALL) (make corpus-linux does that itself when run as root on Debian), or name" \
				"a kernel tree: make corpus-linux KERNEL_SRC=directory-or-tarball" >&2; \
			exit 1; \
		fi; \
	fi
	$(PY) -m training.corpus linux $(if $(KERNEL_SRC),--kernel-src $(KERNEL_SRC)) $(CORPUS_ARGS)

# War and Peace (docs/analysis.md): Project Gutenberg's plain text (ebook #2600) downloaded once to data/pg2600.txt
# and checked by its sha256, or CORPUS=path a local copy of pg2600.txt; its header and licence stripped, into
# data/warandpeace.txt. Then: make train CORPUS=data/warandpeace.txt.
corpus-warandpeace: setup
	$(PY) -m training.corpus warandpeace $(if $(CORPUS),--local $(CORPUS)) $(CORPUS_ARGS)

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

# `make test` checks for the browser before building either environment, even under make -j.
ifneq ($(filter test,$(MAKECMDGOALS)),)
$(VENV)/.installed $(K8S_VENV)/.installed: | browser
endif

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
