# One entry point for everything: make demo, make test, make lint, make bench.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Apache Airflow, for the DAG in deploy/airflow/: a virtual environment of its own (its pins are not ours).
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
# make bench: the full profile (about an hour), which regenerates docs/benchmarks.md's tables;
# make bench BENCH_ARGS='--profile quick' for a few minutes, '--suite serving' for one suite.
BENCH_ARGS ?= --profile full
# Where the browser tests leave the dashboard's screenshots (git-ignored); `make screenshots` copies them
# into docs/, which the README shows.
SCREENSHOTS := build/screenshots

.PHONY: demo test test-fast screenshots lint bench lambda clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(AIRFLOW_STAMP): deploy/airflow/requirements.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install --quiet -r deploy/airflow/requirements.txt
	touch $(AIRFLOW_STAMP)

demo: $(STAMP)
	$(BIN)/pisa-pulse demo

test: $(STAMP) $(AIRFLOW_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The tests that need no server (no PostgreSQL, browser or server process): under a minute. A test that
# starts one anyway fails (tests/conftest.py marks and guards them).
test-fast: $(STAMP)
	PISA_PULSE_TESTS_NO_SERVER=1 $(BIN)/pytest -m "not server" $(PYTEST_ARGS)

screenshots: $(STAMP)
	rm -f $(SCREENSHOTS)/dashboard-*.png
	$(BIN)/pytest tests/test_dashboard.py::test_screenshots_at_laptop_and_phone_sizes $(PYTEST_ARGS)
	cp $(SCREENSHOTS)/dashboard-1440x900.png $(SCREENSHOTS)/dashboard-390x844.png docs/

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The Lambda function's slim package (pisa_pulse/aws/package.py), deploy/template.yaml's CodeUri.
lambda: $(STAMP)
	$(BIN)/python -m pisa_pulse.aws.package build/lambda

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) build dist src/*.egg-info
