# skewless: every target documents itself for `make help` (target: ## what it does).
SHELL := /bin/bash
UV_VERSION := 0.13.8
.DEFAULT_GOAL := help

BOOTSTRAP := $(HOME)/.cache/skewless/uv-$(UV_VERSION)
UV := $(BOOTSTRAP)/bin/uv
RUN := $(UV) run --frozen --no-sync
SKEWLESS := $(RUN) skewless
export UV_PYTHON_DOWNLOADS := never
export MLFLOW_DISABLE_TELEMETRY := true
export SPARK_LOCAL_IP := 127.0.0.1
PYTEST := $(RUN) pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=20
# Two test processes, each with servers of its own; a file's tests stay in one process, in
# the order they are written, and each process takes the files in the order they are listed.

.PHONY: help setup config services-up services-status services-down mlflow-ui data apply plan feast-ui train retrain materialize replay serve serve-http monitor bench bench-state demo lint unit integration test

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

setup: $(UV) ## install everything: Python env from uv.lock, Java check, Redis, Prometheus, Chromium, Kafka jars (idempotent)
	@echo "setup: Python environment from uv.lock (the first time downloads about 3 GB)"
	@$(UV) sync --frozen --quiet
	$(SKEWLESS) services install

config: ## print the effective settings (NAME=value)
	@$(SKEWLESS) config show

services-up: setup ## start Kafka, Redis, MLflow and Prometheus on loopback and create the topics
	$(SKEWLESS) services up

services-status: ## show each server's pid and health
	$(SKEWLESS) services status

services-down: ## stop every server started by services-up
	$(SKEWLESS) services down

mlflow-ui: setup ## serve the MLflow UI (model versions, aliases) on 127.0.0.1:5000
	$(SKEWLESS) services mlflow-ui

data: setup ## generate the demo transactions (about 1.8M, 183 days) unless they exist
	$(SKEWLESS) simulate --if-missing

apply: setup ## register the feature repository with Feast (feast apply; Spark + Redis)
	$(SKEWLESS) apply

plan: setup ## show what apply would change (feast plan)
	$(SKEWLESS) plan

feast-ui: apply ## Feast's web UI of feature_repo/ on http://127.0.0.1:8888
	cd feature_repo && $(RUN) feast ui --host 127.0.0.1 --port 8888

train: services-up data ## backfill, point-in-time training set, torch model, MLflow version, gate, materialize (SEARCH=1: model selection first)
	$(SKEWLESS) train $(if $(SEARCH),--search)

retrain: ## retrain on the newest data, changed days only (EVERY=1h to repeat, ON_DRIFT=1: only on drift)
	$(SKEWLESS) retrain $(if $(EVERY),--every $(EVERY)) $(if $(ON_DRIFT),--on-drift)

materialize: ## write latest features and streaming state to Redis (UNTIL=YYYY-MM-DD for a replay)
	$(SKEWLESS) materialize $(if $(UNTIL),--until $(UNTIL))

replay: ## publish transactions and delayed labels to Kafka (START=, END=, RATE= optional)
	$(SKEWLESS) replay $(if $(START),--start $(START)) $(if $(END),--end $(END)) $(if $(RATE),--rate $(RATE))

serve: ## the Kafka scoring worker (Ctrl-C stops after the current batch)
	$(SKEWLESS) serve

serve-http: ## the HTTP enricher: POST transactions to http://127.0.0.1:8088/score
	$(SKEWLESS) serve-http

monitor: ## skew, drift, data quality, live quality: HTML report + JSON summary
	$(SKEWLESS) monitor sink
	$(SKEWLESS) monitor compact
	$(SKEWLESS) monitor report

bench: services-up ## end-to-end streaming benchmark against the naive per-event baseline, and the hot-entity state load
	$(RUN) python bench/stream_bench.py

bench-state: setup ## the window state alone: cost against history, memory over 6 months, hot entity (private Redis)
	$(RUN) python bench/state_bench.py

demo: services-up data ## fresh machine: install, start the services and run the whole loop once
	$(SKEWLESS) demo

lint: ## ruff check, ruff format --check and mypy
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

unit: ## unit tests only (no servers)
	$(PYTEST) tests/unit

integration: ## integration tests against real Kafka, Redis, Spark, MLflow and Prometheus
	$(PYTEST) tests/integration

test: setup lint ## install, lint, then run unit and integration tests
	$(PYTEST) tests/unit tests/integration
