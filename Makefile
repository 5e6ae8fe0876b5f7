# The two commands of README.md: `make demo` (the main job) and `make test` (the suite).
# Both run the idempotent setup first, so they work on a fresh Debian/Ubuntu machine.
PY := .venv/bin
REPORTS := reports

.PHONY: setup demo test lint unit bench

setup:
	./scripts/setup

demo: setup
	mkdir -p $(REPORTS)
	$(PY)/pytest examples -p no:cacheprovider -o addopts="" \
		--containersec-report=$(REPORTS)/matrix.md \
		--containersec-report=$(REPORTS)/matrix.html

lint:
	$(PY)/ruff check pytest_containersec tests benchmarks examples
	$(PY)/ruff format --check pytest_containersec tests benchmarks examples
	$(PY)/mypy

unit:
	$(PY)/pytest tests/unit tests/plugin -q

test: setup lint
	$(PY)/pytest tests -n 2 -p no:cacheprovider -rfEs

bench: setup
	$(PY)/python benchmarks/startup.py
	$(PY)/python benchmarks/facts.py
