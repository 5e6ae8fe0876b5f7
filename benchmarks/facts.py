"""A full Facts snapshot (every field plus 10 access probes) on a running container,
versus one bare `docker exec ID true`, and versus the same facts through
pytest-testinfra's docker backend. Medians of N, interleaved, as ratios in one run.

Run as root after `make setup`: `.venv/bin/python benchmarks/facts.py`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import testinfra
from startup import as_installed

from pytest_containersec.runtimes import close_all, get_runtime
from pytest_containersec.spec import ContainerSpec

ACCESS = (
    "/etc/passwd:r", "/etc/passwd:w", "/etc/group:r", "/etc/hostname:w", "/bin/sh:x",
    "/tmp:w", "/root:r", "/var/www/index.html:r", "/proc/1/environ:r", "/sys/kernel/profiling:w",
)  # fmt: skip


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    n = ap.parse_args().n
    as_installed()
    rt = get_runtime("docker")
    with rt.start(ContainerSpec(user="1000", cap_drop=["ALL"], memory="64m")) as c:
        host = testinfra.get_host(f"docker://{c.id}")

        def ours() -> object:
            return c.facts(access=ACCESS, refresh=True)

        def bare() -> object:
            return subprocess.run(["docker", "exec", c.id, "true"], check=True)

        def probe_check() -> object:  # one of the two per snapshot (before, after)
            return c.check_probe()

        # the container's own limit files, as its cgroup namespace shows them (v2 or v1)
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        memory_limit = "memory.max" if v2 else "memory/memory.limit_in_bytes"
        pids_limit = "pids.max" if v2 else "pids/pids.max"

        def with_testinfra() -> object:
            # the same facts, one command each, the way a testinfra test reads them
            facts = [
                host.user().uid,
                host.file("/proc/1/status").content_string,  # caps, seccomp, nnp
                host.file("/proc/1/uid_map").content_string,
                host.file("/proc/1/gid_map").content_string,
                host.file("/proc/1/mountinfo").content_string,
                host.file("/proc/1/cgroup").content_string,
                host.file(f"/sys/fs/cgroup/{memory_limit}").content_string,
                host.file(f"/sys/fs/cgroup/{pids_limit}").exists,
            ]
            for key in ACCESS:
                path, _, mode = key.rpartition(":")
                flag = {"r": "-r", "w": "-w", "x": "-x"}[mode]
                facts.append(host.run_test(f"test {flag} {path}").rc)
            return facts

        for fn in (ours, bare, with_testinfra, probe_check):
            fn()  # warm up
        samples: dict[str, list[float]] = {"ours": [], "bare": [], "testinfra": [], "check": []}
        for _ in range(n):
            samples["ours"].append(timed(ours))
            samples["bare"].append(timed(bare))
            samples["testinfra"].append(timed(with_testinfra))
            samples["check"].append(timed(probe_check))
    close_all()
    # End to end, interpreter start to exit: the CLI versus the bare docker sequence.
    probes = [f"--probe-access={k}" for k in ACCESS]
    cli = [sys.executable, "-m", "pytest_containersec.cli.cli", "facts", "--runtime", "docker",
           *probes, "containersec/probe"]  # fmt: skip

    def bare_sequence() -> object:
        run = ["docker", "run", "-d", "--network", "none", "containersec/probe", "sleep", "99"]
        cid = subprocess.run(run, check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["docker", "exec", cid, "true"], check=True)
        return subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)

    def ours_cli() -> object:
        return subprocess.run(cli, check=True, capture_output=True)

    for fn in (ours_cli, bare_sequence):
        fn()
    for _ in range(n):
        samples.setdefault("cli", []).append(timed(ours_cli))
        samples.setdefault("bare_seq", []).append(timed(bare_sequence))
    m = {k: statistics.median(v) for k, v in samples.items()}
    print("| measurement | median | ratio |")
    print("|---|---|---|")
    print(f"| `docker exec ID true` (CLI) | {m['bare'] * 1000:.0f} ms | 1.00 |")
    t_ours, t_bare, t_ti = m["ours"], m["bare"], m["testinfra"]
    print(
        f"| full snapshot, 10 extra access probes | {t_ours * 1000:.0f} ms "
        f"| {t_ours / t_bare:.2f} |"
    )
    t_check = m["check"]
    print(
        f"| of which: the probe folder check (x2: before and after the exec) "
        f"| {t_check * 1000:.1f} ms | {t_check / t_bare:.2f} each |"
    )
    print(
        f"| `containersec facts` end to end (10 probes) vs `docker run -d` + `exec true` + "
        f"`rm -f` ({m['bare_seq'] * 1000:.0f} ms) | {m['cli'] * 1000:.0f} ms | "
        f"{m['cli'] / m['bare_seq']:.2f} (target <= 1.5) |"
    )
    print(
        f"| same facts via pytest-testinfra (docker backend) | {t_ti * 1000:.0f} ms "
        f"| {t_ti / t_bare:.2f} ({t_ti / t_ours:.1f}x ours) |"
    )


if __name__ == "__main__":
    main()
