"""A 20-check test module on 3 runtimes versus the bare runtimes' start times plus
pytest's own start (a script; never a timed assert). Target: at most 1.3x.

The module has 20 tests, each one `expect.*` call on the same marker's container, run
with ``--containersec-runtime docker,podman,nspawn``. The baseline is what cannot be
avoided: pytest starting and collecting the same module with the plugin disabled, plus one
bare container start + exec + stop per runtime (the CLIs of benchmarks/startup.py).

    .venv/bin/python benchmarks/module20.py [-n 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from startup import PYTEST, as_installed, cli_engine, cli_nspawn

RUNTIMES = ("docker", "podman", "nspawn")
CHECKS = [
    "expect.capabilities(c, effective=[])",
    'expect.capabilities(c, absent=["SYS_ADMIN"])',
    'expect.seccomp(c, "filter")',
    "expect.no_new_privs(c)",
    "expect.read_only_rootfs(c)",
    'expect.cgroup(c, memory="64m")',
    "expect.cgroup(c, pids=50)",
    "expect.user(c, uid=1000)",
    "expect.non_root(c)",
    'expect.denied(c, "/etc/shadow", "r")',
    'expect.denied(c, "/proc/sysrq-trigger", "w")',
    'expect.denied(c, "/proc/sys/kernel/core_pattern", "w")',
    'expect.denied(c, "/dev/mem", "r")',
    'expect.operation_denied(c, "mount_tmpfs")',
    'expect.operation_denied(c, "load_module")',
    'expect.operation_denied(c, "mknod_device")',
    "expect.not_privileged(c)",
    "expect.no_sensitive_mounts(c)",
    'expect.namespaces_private(c, ["net"])',
    'expect.allowed(c, "/etc/passwd", "r")',
]
HEADER = """
import pytest
from pytest_containersec import expect

pytestmark = pytest.mark.containersec(
    user="1000", cap_drop=["ALL"], read_only=True, no_new_privileges=True,
    memory="64m", pids_limit=50,
)
"""


def make_module(root: Path) -> None:
    tests = [
        f"def test_{i}(containersec_container):\n    c = containersec_container\n    {check}\n"
        for i, check in enumerate(CHECKS)
    ]
    (root / "test_module20.py").write_text(HEADER + "\n\n" + "\n\n".join(tests))


def timed_pytest(root: Path, extra: list[str], expect_rc: int) -> float:
    argv = [*PYTEST, *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != expect_rc:
        raise SystemExit(f"pytest exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return elapsed


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5)
    n = parser.parse_args().n
    as_installed()
    bare = {
        "docker": cli_engine(["docker", "-H", "unix:///var/run/docker.sock"]),
        "podman": cli_engine(["podman"]),
        "nspawn": cli_nspawn,
    }
    with tempfile.TemporaryDirectory(prefix="containersec-bench-") as tmp:
        root = Path(tmp)
        make_module(root)
        ours_argv = [f"--containersec-runtime={','.join(RUNTIMES)}"]
        # pytest's own start and collection of the same module, plugin disabled: the
        # tests then error at setup (no fixture), exit status 1
        plain_argv = ["-p", "no:containersec", "--co"]
        timed_pytest(root, ours_argv, 0)  # warm up (services, caches)
        ours, plain, cli = [], [], []
        for _ in range(n):  # interleaved: all see the same machine noise
            ours.append(timed_pytest(root, ours_argv, 0))
            plain.append(timed_pytest(root, plain_argv, 0))
            cli.append(sum(timed(fn) for fn in bare.values()))
    m_ours, m_plain, m_cli = (statistics.median(x) for x in (ours, plain, cli))
    base = m_plain + m_cli
    print("| measurement | median |")
    print("|---|---|")
    print(f"| pytest start + collection, plugin disabled | {m_plain:.2f} s |")
    print(f"| bare start + exec + stop on {', '.join(RUNTIMES)} | {m_cli:.2f} s |")
    print(f"| 20-check module on the 3 runtimes (60 test runs) | {m_ours:.2f} s |")
    print(f"| ratio (target <= 1.3) | {m_ours / base:.2f} |")


if __name__ == "__main__":
    main()
