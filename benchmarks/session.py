"""Whole pytest sessions with the plugin for real (docker runtime): how the cost scales with
containers and with checks, what ``-n 2`` (pytest-xdist) buys, and the peak memory of the
pytest process. A script printing ratios measured in one run; never a timed assert.

Each measurement runs ``pytest --containersec-runtime docker`` in a subprocess on a
generated project: C containers (distinct specs: one env value differs) with one test
each, and K ``expect.*`` calls per test on that test's container. The checks read the
container's cached Facts snapshot, so the cost should grow with C and not with K.

    .venv/bin/python benchmarks/session.py scaling [-n 1]  # 3x3 wall times (+ peak RSS)
    .venv/bin/python benchmarks/session.py xdist [-n 3]    # 20 containers x 10 checks, -n 2
    .venv/bin/python benchmarks/session.py memory [-n 3]   # peak RSS, 1x1 versus 50x100
    .venv/bin/python benchmarks/session.py all             # the three, in that order

Runs are interleaved (every configuration in every round); medians over the rounds. The
load average is printed before and after: other work on this machine (a test suite, a
second benchmark) shows up there. Run as root after ``make setup`` (dockerd up, the probe
image imported).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from startup import PYTEST, as_installed

CONTAINERS = (1, 10, 50)
CHECKS = (1, 10, 100)
XDIST_CELL = (20, 10)
MEMORY_CELLS = ((1, 1), (50, 100))
OWNER_LABEL = "io.containersec.owner"

MODULE = """\
import pytest

from pytest_containersec import expect

SPEC = dict(user="1000", cap_drop=["ALL"], no_new_privileges=True, memory="64m",
            pids_limit=64)
# Nine different expectations, all answered by the container's one cached snapshot
# (/etc/shadow:r is one of the probe's default access keys).
CHECKS = [
    lambda c: expect.capabilities(c, effective=set()),
    lambda c: expect.seccomp(c, "filter"),
    lambda c: expect.no_new_privs(c),
    lambda c: expect.user(c, uid=1000),
    lambda c: expect.cgroup(c, memory="64m", pids=64),
    lambda c: expect.denied(c, "/etc/shadow", "r"),
    lambda c: expect.not_privileged(c),
    lambda c: expect.no_sensitive_mounts(c),
    lambda c: expect.operation_denied(c, "mount_tmpfs"),
]
PARAMS = [
    pytest.param(i, marks=pytest.mark.containersec(env={{"BENCH_ID": str(i)}}, **SPEC))
    for i in range({containers})
]


@pytest.mark.parametrize("i", PARAMS)
def test_container(containersec_container, i):
    for k in range({checks}):
        CHECKS[k % len(CHECKS)](containersec_container)
"""


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    rss: float  # MB: ru_maxrss of the pytest process (and the children it waited for)


def make_suite(root: Path, containers: int, checks: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")  # rootdir here, not the repo's config
    (root / "test_bench.py").write_text(MODULE.format(containers=containers, checks=checks))


def run(root: Path, expected: int, extra: tuple[str, ...] = ()) -> Sample:
    """One pytest session; its wall time and peak RSS (os.wait4: this child only)."""
    argv = [*PYTEST, "--containersec-runtime", "docker", *extra]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    passed = re.search(r"(\d+) passed", text)
    if proc.returncode != 0 or passed is None or int(passed.group(1)) != expected:
        raise SystemExit(f"pytest in {root} failed ({proc.returncode}):\n{text[-4000:]}")
    return Sample(wall, usage.ru_maxrss / 1024)  # Linux: KiB


def measure(
    base: Path, cells: list[tuple[int, int]], rounds: int, extra: tuple[str, ...] = ()
) -> dict[tuple[int, int], list[Sample]]:
    """Every cell in every round (interleaved), after one warm-up run. The cheap cells
    (under 10 containers) run several times a round: their medians are as steady as the
    others' for little time."""
    for c, k in cells:
        make_suite(base / f"c{c}-k{k}", c, k)
    c, k = cells[0]
    run(base / f"c{c}-k{k}", c, extra)  # warm up: bytecode, page cache, docker's image
    samples: dict[tuple[int, int], list[Sample]] = {cell: [] for cell in cells}
    for r in range(rounds):
        for c, k in cells:
            for _ in range(min(5, max(1, 10 // c))):
                s = run(base / f"c{c}-k{k}", c, extra)
                samples[(c, k)].append(s)
                print(f"  round {r + 1}: {c} containers x {k} checks: {s.wall:.2f} s, "
                      f"{s.rss:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
    return samples


def median_wall(samples: list[Sample]) -> float:
    return statistics.median(s.wall for s in samples)


def median_rss(samples: list[Sample]) -> float:
    return statistics.median(s.rss for s in samples)


def scaling(base: Path, rounds: int) -> dict[tuple[int, int], list[Sample]]:
    cells = [(c, k) for c in CONTAINERS for k in CHECKS]
    samples = measure(base, cells, rounds)
    t = {cell: median_wall(v) for cell, v in samples.items()}
    first, last = CHECKS[0], CHECKS[-1]
    print(f"\n### Scaling: wall time of one pytest session (docker; medians of {rounds} "
          "rounds, 5 runs a round for 1 container)\n")  # fmt: skip
    print("| containers \\ checks per container | " + " | ".join(map(str, CHECKS))
          + f" | {last} vs {first} check |")  # fmt: skip
    print("|---|" + "---|" * (len(CHECKS) + 1))
    for c in CONTAINERS:
        row = " | ".join(f"{t[(c, k)]:.2f} s" for k in CHECKS)
        print(f"| {c} | {row} | {t[(c, last)] / t[(c, first)]:.2f} |")
    lo, hi = CONTAINERS[0], CONTAINERS[-1]
    ratios = " | ".join(f"{t[(hi, k)] / t[(lo, k)]:.2f}" for k in CHECKS)
    print(f"| {hi} vs {lo} container | {ratios} | |")
    slope = " | ".join(f"{(t[(hi, k)] - t[(lo, k)]) / (hi - lo) * 1000:.0f} ms" for k in CHECKS)
    print(f"| per extra container | {slope} | |")
    return samples


def xdist(base: Path, rounds: int) -> None:
    c, k = XDIST_CELL
    make_suite(base / "xdist", c, k)
    run(base / "xdist", c)  # warm up
    serial: list[float] = []
    parallel: list[float] = []
    for r in range(rounds):
        first_serial = r % 2 == 0  # alternate the order: a drifting load hits both alike
        for parallel_run in (not first_serial, first_serial):
            wall = run(base / "xdist", c, ("-n", "2") if parallel_run else ()).wall
            (parallel if parallel_run else serial).append(wall)
        print(f"  round {r + 1}: serial {serial[-1]:.2f} s, -n 2 {parallel[-1]:.2f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    a, b = statistics.median(serial), statistics.median(parallel)
    print(f"\n### pytest-xdist: {c} containers x {k} checks (docker; median of {rounds}; "
          f"{os.cpu_count()} CPUs)\n")  # fmt: skip
    print("| run | wall time | speed-up |")
    print("|---|---|---|")
    print(f"| serial | {a:.2f} s | 1.00 |")
    print(f"| `-n 2` | {b:.2f} s | {a / b:.2f} |")


def memory_table(samples: dict[tuple[int, int], list[Sample]]) -> None:
    small, big = MEMORY_CELLS
    a, b = median_rss(samples[small]), median_rss(samples[big])
    runs = f"{len(samples[small])} and {len(samples[big])} runs"
    print(f"\n### Peak RSS of the pytest process (ru_maxrss; medians of {runs})\n")
    print("| run | peak RSS | ratio |")
    print("|---|---|---|")
    print(f"| {small[0]} container x {small[1]} check | {a:.1f} MB | 1.00 |")
    print(f"| {big[0]} containers x {big[1]} checks | {b:.1f} MB | {b / a:.2f} |")


def leftovers() -> None:
    proc = subprocess.run(["docker", "ps", "-a", "--filter", f"label={OWNER_LABEL}", "-q"],
                          capture_output=True, text=True)  # fmt: skip
    ids = proc.stdout.split()
    if proc.returncode != 0:
        print(f"\nWARNING: could not list containers: {proc.stderr.strip()}")
    elif ids:
        print(f"\nWARNING: {len(ids)} container(s) labelled {OWNER_LABEL} remain: "
              f"{' '.join(ids)}")  # fmt: skip
    else:
        print(f"\nno container labelled {OWNER_LABEL} remains")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("scaling", "xdist", "memory", "all"))
    parser.add_argument("-n", type=int, default=None,
                        help="rounds (default: 1 for scaling and all, 3 otherwise)")  # fmt: skip
    args = parser.parse_args()
    as_installed()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the docker runtime needs the daemon's socket)")
    rounds = args.n or (1 if args.what in ("scaling", "all") else 3)
    load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="containersec-bench-") as tmp:
            base = Path(tmp)
            if args.what in ("scaling", "all"):
                memory_table(scaling(base, rounds))
            if args.what == "memory":
                memory_table(measure(base, list(MEMORY_CELLS), rounds))
            if args.what in ("xdist", "all"):
                xdist(base, rounds if args.n else 3)
    finally:
        after = os.getloadavg()
        print(f"\nload average (1 min) before: {load[0]:.2f}, after: {after[0]:.2f} "
              f"({os.cpu_count()} CPUs)")  # fmt: skip
        leftovers()


if __name__ == "__main__":
    main()
