# fastq: `make help` lists the targets. CI runs `bash ci/run.sh`, which calls `make lint`.
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help
help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: install
install: ## install system packages, create .venv and build everything (Rust + Cython)
	bash ci/install-deps.sh
	bash ci/setup-venv.sh

.PHONY: build-dev
build-dev: ## rebuild the extensions in place after editing rust/ or cython/
	rm -f python/fastq/_core*.so python/fastq/_ipc*.so python/fastq/_amqp*.so
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v 'is ignored' || true

.PHONY: debug
debug: ## rebuild with FASTQ_DEBUG checks, Cython annotate/linetrace and a Rust debug build
	rm -f python/fastq/_core*.so python/fastq/_ipc*.so python/fastq/_amqp*.so
	FASTQ_DEBUG=1 SETUPTOOLS_RUST_CARGO_PROFILE=dev $(PY) -m pip install -q --no-deps --no-build-isolation -e .

.PHONY: format
format: ## format Python and Rust
	ruff format python tests benches examples
	ruff check --fix python tests benches examples
	cd rust && cargo fmt

.PHONY: lint-python
lint-python: ## ruff (lint + format check)
	ruff check python tests benches examples
	ruff format --check python tests benches examples

.PHONY: typecheck
typecheck: ## mypy --strict on python/fastq, and stubtest of the compiled modules against their .pyi
	mypy
	$(PY) -m mypy.stubtest fastq._core fastq._ipc fastq._amqp --allowlist ci/stubtest-allowlist.txt

.PHONY: lint-rust
lint-rust: ## cargo fmt --check and clippy -D warnings
	cd rust && cargo fmt --check && cargo clippy --quiet --all-targets -- -D warnings

.PHONY: lint-cython
lint-cython: ## cython-lint
	cython-lint cython/

.PHONY: lint
lint: lint-python typecheck lint-rust lint-cython ## every linter CI runs

.PHONY: test
test: ## run the Rust and Python test suites
	cd rust && cargo test --quiet
	$(PY) -m pytest -q

.PHONY: bench
bench: ## full benchmarks (about 95 min on the shared 2-core machine): micro benches, then fastq vs Celery on Redis, SQLite and RabbitMQ, 3 rounds; writes benches/RESULTS.md + results.png
	$(PY) -m pytest benches -q --benchmark-columns=min,median,ops -p no:cacheprovider
	$(PY) benches/macro.py

.PHONY: bench-quick
bench-quick: ## the same in about 2 minutes (small counts, 1 round, 3 s soak); writes benches/RESULTS-quick.md
	$(PY) -m pytest benches -q --benchmark-columns=min,median,ops -p no:cacheprovider --benchmark-max-time=0.2
	$(PY) benches/macro.py --quick

.PHONY: bench-soak
bench-soak: ## worker memory: a 10-minute soak and 100,000 ETA tasks, fastq and Celery; writes benches/RESULTS-soak.md
	$(PY) benches/macro.py --workloads soak,eta --soak 600 --out benches/RESULTS-soak.md

.PHONY: bench-rabbit
bench-rabbit: ## RabbitMQ rows only (fastq vs Celery, with and without publisher confirms, on a fresh node, 3 rounds); replaces that section of benches/RESULTS.md
	$(PY) benches/macro.py --broker rabbitmq --workloads publish,publish-batch,drain,e2e,e2e-batch,latency

.PHONY: demo
demo: ## run the quickstart app on the embedded SQLite broker
	$(PY) examples/demo.py

.PHONY: clean
clean: ## remove build artefacts
	rm -rf build *.egg-info python/*.egg-info python/fastq/*.so cython/*.c cython/*.html rust/target .mypy_cache .ruff_cache
