"""A module needing R runtimes x S specs: the plugin's wall time versus the bare CLIs run
one after another and all at once (a script; never a timed assert).

For R in (1, 3, 7) runtimes and S in (1, 5) specs, one pytest module with S tests, each
on its own spec (distinct environments) and one check, run with ``--containersec-runtime`` the
R runtimes. Baselines from the same run, interleaved: pytest's own start and collection
(plugin disabled), the bare start + exec + stop of every (runtime, spec) one after
another, the same all at once (a shell starting them in parallel), and the slowest single
bare start. Target: plugin <= 1.3 x (pytest start + slowest single bare start + checks).

    .venv/bin/python benchmarks/concurrency.py [-n 3] [--runtimes docker,podman,...] [--specs 1,5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from startup import PYTEST, as_installed, as_user, cli_engine, cli_nspawn

from pytest_containersec.runtimes import close_all, get_runtime
from pytest_containersec.runtimes.docker import docker_daemons as dd

ALL = ("docker", "podman", "nspawn", "podman-rootless", "docker-userns", "docker-rootless",
       "systemd-run")  # fmt: skip
SETS = {1: ALL[:1], 3: ALL[:3], 7: ALL}
DAEMONS: list[dd.DockerDaemon] = []  # extra daemons this script started: released at the end


def bare_cli(name: str) -> Callable[[], None] | None:
    """start + exec + stop with the runtime's own CLI (None: there is none to compare)."""
    if name == "docker":
        return cli_engine(["docker", "-H", "unix:///var/run/docker.sock"])
    if name == "podman":
        return cli_engine(["podman"])
    if name == "podman-rootless":
        return cli_engine(as_user(["podman"]))
    if name == "nspawn":
        return cli_nspawn
    if name in (dd.USERNS, dd.ROOTLESS):
        daemon = dd.DockerDaemon(name)
        DAEMONS.append(daemon)
        return cli_engine(["docker", "-H", daemon.ensure()])
    if name == "systemd-run":
        rt = get_runtime(name)
        inst = rt.instance()  # type: ignore[attr-defined]

        def once() -> None:
            argv = ["systemd-run", "--quiet", "--wait", "--collect", "-p", "PrivateNetwork=yes",
                    "/bin/true"]  # fmt: skip
            subprocess.run(inst.command(argv), check=True, capture_output=True)

        return once
    return None


def make_module(root: Path, specs: int) -> None:
    # distinct specs every runtime can run: one user (systemd's User= needs a passwd entry,
    # which only uid 1000 has in every image and host here), its own environment each
    tests = [
        f'@pytest.mark.containersec(user="1000", env={{"SPEC": "{i}"}})\n'
        f"def test_{i}(containersec_container):\n"
        f"    expect.user(containersec_container, uid=1000)\n"
        for i in range(specs)
    ]
    header = "import pytest\nfrom pytest_containersec import expect\n\n"
    (root / "test_conc.py").write_text(header + "\n\n".join(tests))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def pytest_run(root: Path, extra: list[str]) -> Callable[[], object]:
    argv = [*PYTEST, *extra]

    def run() -> object:
        proc = subprocess.run(argv, cwd=root, capture_output=True, text=True)
        if proc.returncode not in (0, 5):
            raise SystemExit(f"pytest exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    return run


def one_by_one(jobs: list[Callable[[], None]]) -> None:
    for job in jobs:
        job()


def all_at_once(jobs: list[Callable[[], None]]) -> None:
    with ThreadPoolExecutor(len(jobs)) as ex:
        for f in [ex.submit(j) for j in jobs]:
            f.result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--runtimes", default="", help="only these (comma-separated)")
    ap.add_argument("--specs", default="1,5", help="the S values (comma-separated)")
    args = ap.parse_args()
    as_installed()
    only = [r for r in args.runtimes.split(",") if r]
    print("| runtimes x specs | plugin | bare one by one | bare all at once | pytest start "
          "+ slowest bare | ratio (target <= 1.3) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r, names in SETS.items():
        names = tuple(n for n in names if not only or n in only)
        available = [n for n in names if get_runtime(n).availability().available]
        if len(available) < len(names) or len(names) != r:
            missing = sorted(set(names) - set(available)) or ["(filtered)"]
            print(f"| {r} x - | skipped: {', '.join(missing)} unavailable | | | | |")
            continue
        clis = {n: bare_cli(n) for n in names}
        for s in [int(x) for x in args.specs.split(",") if x]:
            with tempfile.TemporaryDirectory(prefix="containersec-conc-") as tmp:
                root = Path(tmp)
                make_module(root, s)
                ours = pytest_run(root, [f"--containersec-runtime={','.join(names)}"])
                plain = pytest_run(root, ["-p", "no:containersec", "--co"])
                jobs = [fn for fn in clis.values() if fn is not None for _ in range(s)]
                sequential = functools.partial(one_by_one, jobs)
                parallel = functools.partial(all_at_once, jobs)

                ours()  # warm up: services, caches
                sequential()
                t_ours, t_plain, t_seq, t_par, t_slow = [], [], [], [], []
                for _ in range(args.n):  # interleaved: all see the same machine noise
                    t_ours.append(timed(ours))
                    t_plain.append(timed(plain))
                    t_seq.append(timed(sequential))
                    t_par.append(timed(parallel))
                    t_slow.append(max(timed(fn) for fn in clis.values() if fn is not None))
                m = [statistics.median(x) for x in (t_ours, t_plain, t_seq, t_par, t_slow)]
                base = m[1] + m[4]
                print(f"| {r} x {s} | {m[0]:.2f} s | {m[2]:.2f} s | {m[3]:.2f} s | "
                      f"{base:.2f} s | {m[0] / base:.2f} |")  # fmt: skip
    for daemon in DAEMONS:
        daemon.release()
    close_all()


if __name__ == "__main__":
    main()
