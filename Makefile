# The two commands of README.md: `make demo` (the main job) and `make test` (the suite).
# Both run the idempotent setup first, so they work on a fresh Debian/Ubuntu machine.
PY := .venv/bin
REPORTS := reports

.PHONY: setup demo test test-vm test-vm-full lint unit bench bench-vm

setup:
	./scripts/setup

# Exit status 1 means checks failed: real findings (e.g. rootless engines on cgroup v1
# ignore limits), shown in the matrix; any other non-zero status is an error.
demo: setup
	mkdir -p $(REPORTS)
	rc=0; $(PY)/pytest examples -p no:cacheprovider -o addopts="" -rfs \
		--containersec-report=$(REPORTS)/matrix.md \
		--containersec-report=$(REPORTS)/matrix.html || rc=$$?; \
	if [ $$rc -eq 1 ]; then echo "demo: done; failed checks above are findings (see the matrix)"; fi; \
	[ $$rc -le 1 ]

lint:
	$(PY)/ruff check pytest_containersec tests benchmarks examples
	$(PY)/ruff format --check pytest_containersec tests benchmarks examples
	$(PY)/mypy
	$(PY)/lint-imports --no-cache

unit:
	$(PY)/pytest tests/unit tests/plugin -q

test: setup lint
	$(PY)/pytest tests -n 2 -p no:cacheprovider -rfEs

# The second test host: the integration tier and the examples inside a Debian trixie VM
# under qemu (scripts/vm/vm.py; image cached by recipe hash under /var/lib/containersec/vm).
test-vm:
	python3 scripts/vm/vm.py setup
	python3 scripts/vm/vm.py test

# Every runtime-dependent integration test inside the VM (~60 min under TCG; not in CI).
test-vm-full:
	python3 scripts/vm/vm.py setup
	CONTAINERSEC_TEST_TIER=full python3 scripts/vm/vm.py test --timeout 4800

bench: setup
	$(PY)/python benchmarks/startup.py
	$(PY)/python benchmarks/facts.py
	$(PY)/python benchmarks/plugin_overhead.py
	$(PY)/python benchmarks/module20.py
	$(PY)/python benchmarks/session.py all
	$(PY)/python benchmarks/concurrency.py

# The same ratios on the second test host (the trixie VM under qemu; ~30 min under TCG).
bench-vm:
	python3 scripts/vm/vm.py setup
	python3 scripts/vm/vm.py run --timeout 3000 -- scripts/vm/inside bench
