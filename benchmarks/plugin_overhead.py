"""Plugin overhead when no container test is selected (a script; never a timed assert).

Generates a 200-test suite without containers and runs it with the plugin installed and
with ``-p no:containersec``, interleaved, several times each; prints the median wall times
and their ratio (target: <= 1.05).

    .venv/bin/python benchmarks/plugin_overhead.py [--runs 9] [--tests 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from startup import PYTEST, as_installed

MODULE = """
import pytest

@pytest.fixture
def value():
    return 3

@pytest.mark.parametrize("n", range({per}))
def test_param(n, value):
    assert n * value >= 0

class TestGroup:
    def test_a(self, tmp_path):
        assert tmp_path.exists()

    def test_b(self):
        assert "x" * 3 == "xxx"
"""


def make_suite(root: Path, tests: int) -> None:
    modules = 10
    per = tests // modules - 2
    for i in range(modules):
        (root / f"test_mod{i}.py").write_text(MODULE.format(per=per))


def run(root: Path, extra: list[str]) -> float:
    argv = [*PYTEST, *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tests", type=int, default=200)
    args = parser.parse_args()
    as_installed()
    with tempfile.TemporaryDirectory(prefix="containersec-bench-") as tmp:
        root = Path(tmp)
        make_suite(root, args.tests)
        run(root, [])  # warm up: bytecode caches, page cache
        run(root, ["-p", "no:containersec"])
        with_plugin: list[float] = []
        without: list[float] = []
        for _ in range(args.runs):
            with_plugin.append(run(root, []))
            without.append(run(root, ["-p", "no:containersec"]))
    a, b = statistics.median(with_plugin), statistics.median(without)
    print(f"tests: {args.tests}, runs: {args.runs} each (interleaved), median wall time")
    print(f"with containersec:      {a:.3f} s  (min {min(with_plugin):.3f})")
    print(f"-p no:containersec:     {b:.3f} s  (min {min(without):.3f})")
    print(f"ratio: {a / b:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
