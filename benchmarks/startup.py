"""Start + one exec + stop through the adapter versus the bare CLI doing the same steps.

Median of N runs each, interleaved, in one process; prints a Markdown table of ratios
(adapter / CLI). Run as root after `make setup`: `.venv/bin/python benchmarks/startup.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pytest_containersec.linux import hostinfo
from pytest_containersec.runtimes import close_all, get_runtime, procs
from pytest_containersec.runtimes.nspawn.nspawn_spec import register_args
from pytest_containersec.spec import ContainerSpec

IMAGE = "containersec/probe"
# A pytest session as the benchmarks run it. Without this project's own dev plugin
# (hypothesis): where bytecode is not written (PYTHONDONTWRITEBYTECODE) pytest rewrites its
# ~50 modules in every session, ~0.5 s that a user's project does not pay and that would
# weigh on both sides of every ratio.
PYTEST = [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:hypothesispytest",
]
CACHE = "/var/lib/containersec/images/containersec_probe/rootfs"


def as_installed() -> None:
    """Compile the package's modules as pip does when it installs a wheel. This checkout is
    an editable install, and where bytecode is not written (PYTHONDONTWRITEBYTECODE) every
    process would compile them from source, which an installed plugin never does."""
    import compileall

    import pytest_containersec

    compileall.compile_dir(Path(pytest_containersec.__file__).parent, quiet=1)


def run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, cwd="/").stdout


def as_user(argv: list[str]) -> list[str]:
    user = hostinfo.rootless_user()
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "env", "-i", f"HOME={user.pw_dir}", "PATH=/usr/bin:/bin",
            f"XDG_RUNTIME_DIR=/run/user/{user.pw_uid}", *argv]  # fmt: skip


def cli_engine(engine: list[str], run_opts: tuple[str, ...] = ()) -> Callable[[], None]:
    def once() -> None:
        cid = run([*engine, "run", "-d", *run_opts, "--network", "none", IMAGE, "sleep", "3600"])
        cid = cid.strip()
        run([*engine, "exec", cid, "true"])
        run([*engine, "rm", "-f", *(["-t", "0"] if "podman" in engine[-3:] else []), cid])

    return once


def cli_nspawn() -> None:
    """The same steps by hand: a rootfs copy, nspawn running a sleep in the background
    (registered with machined where systemd is PID 1, as the adapter does there), one
    `nsenter` into the container once its command runs, then nspawn stopped."""
    register = register_args(hostinfo.systemd_is_pid1())
    d = tempfile.mkdtemp(prefix="bench-nspawn-")
    try:
        run(["cp", "-a", "--reflink=auto", f"{CACHE}/.", d])
        proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", *register, "--console=pipe",
             "--private-users=pick", "--private-users-ownership=map", "--private-network",
             "-D", d, "/bin/sleep", "3600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            inner = _running_child(proc, "sleep")
            run(["nsenter", "-t", str(inner), "-a", "/bin/true"])
        finally:
            proc.terminate()
            procs.wait(proc, 30)  # woken when it exits, as a shell's `wait` is
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _running_child(proc: subprocess.Popen[bytes], comm: str, timeout: float = 30) -> int:
    """The pid of ``proc``'s child once it runs ``comm`` (polled, as a script would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            for pid in children:
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return int(pid)
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"nspawn did not run {comm} (exit status {proc.poll()})")


def cli_lxc() -> None:
    """The same LXC container by hand: a rootfs copy, a config, start, attach, stop."""
    from pytest_containersec.runtimes.lxc import lxc_spec

    base = Path(tempfile.mkdtemp(prefix="bench-lxc-"))
    base.chmod(0o755)
    start, count = lxc_spec.parse_subids(Path("/etc/subuid").read_text())[0]
    try:
        (base / "c").mkdir()
        run(["cp", "-a", f"{CACHE}", str(base / "c" / "rootfs")])
        (base / "c" / "config").write_text(
            "lxc.include = /usr/share/lxc/config/common.conf\n"
            "lxc.include = /usr/share/lxc/config/userns.conf\n"
            f"lxc.idmap = u 0 {start} {count}\nlxc.idmap = g 0 {start} {count}\n"
            f"lxc.rootfs.path = dir:{base}/c/rootfs\nlxc.rootfs.options = idmap=container\n"
            "lxc.net.0.type = empty\nlxc.init.cmd = /bin/sleep 3600\n"
        )
        lxc = ["-n", "c", "-P", str(base)]
        run(["lxc-start", *lxc, "-d"])
        run(["lxc-attach", *lxc, "--clear-env", "--", "/bin/true"])
        run(["lxc-stop", "-k", *lxc])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def cli_containerd() -> Callable[[], None]:
    from pytest_containersec.runtimes.containerd.containerd import ContainerdRuntime

    rt = get_runtime("containerd")
    assert isinstance(rt, ContainerdRuntime)
    rt.ensure_image(IMAGE)
    ctr = rt.ctr_argv()
    ref = f"docker.io/{IMAGE}:latest"

    def once() -> None:
        run([*ctr, "run", "-d", "--seccomp", ref, "bench", "sleep", "3600"])
        run([*ctr, "task", "exec", "--exec-id", "e", "bench", "true"])
        run([*ctr, "task", "kill", "-s", "SIGKILL", "bench"])
        subprocess.run([*ctr, "task", "delete", "bench"], capture_output=True, check=False)
        run([*ctr, "containers", "delete", "bench"])

    return once


def cli_incus() -> Callable[[], None]:
    """The same container by hand: ``incus launch`` of the adapter's local image (the
    default profile has only the root disk: no network), with LXC's init set to a sleep,
    ``incus exec``, ``incus delete --force``."""
    from pytest_containersec.runtimes.incus.incus import ensure_image

    alias = ensure_image(IMAGE)[0]

    def once() -> None:
        run(["incus", "launch", alias, "benchincus", "-c",
             "raw.lxc=lxc.init.cmd = /bin/sleep 3600"])  # fmt: skip
        run(["incus", "exec", "benchincus", "--", "/bin/true"])
        run(["incus", "delete", "--force", "benchincus"])

    return once


def cli_portable() -> Callable[[], None]:
    """The same portable service by hand, in the adapter's manager (the host's systemd or
    the one booted in nspawn): an image copy with a unit, ``portablectl attach --now``, an
    ``nsenter`` into the unit as the exec, ``portablectl detach --now``."""
    from pytest_containersec.runtimes.systemd import portable

    rt = get_runtime("portable")
    assert isinstance(rt, portable.PortableRuntime)
    inst = rt.instance()
    p = portable.Paths(inst, "benchportable")

    def once() -> None:
        p.image.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", CACHE, str(p.image)])
        units = p.image / "usr/lib/systemd/system"
        units.mkdir(parents=True, exist_ok=True)
        (units / "benchportable.service").write_text("[Service]\nExecStart=/bin/sleep 3600\n")
        (p.image / "etc/machine-id").touch()
        try:
            r = inst.run(["portablectl", "attach", "--now", "--runtime", "--profile=default",
                          p.image_inside])  # fmt: skip
            assert r.returncode == 0, r.stderr
            main = inst.run(["systemctl", "show", "-p", "MainPID", "--value",
                             "benchportable.service"]).stdout.strip()  # fmt: skip
            pid = inst.host_pid(int(main))
            run(["nsenter", "-t", str(pid), "-a", "/bin/true"])
            r = inst.run(["portablectl", "detach", "--now", "--runtime", p.image_inside])
            assert r.returncode == 0, r.stderr
        finally:
            shutil.rmtree(p.image, ignore_errors=True)

    return once


def lazy(make: Callable[[], Callable[[], None]]) -> Callable[[], None]:
    made: list[Callable[[], None]] = []

    def once() -> None:
        if not made:
            made.append(make())
        made[0]()

    return once


def adapter(name: str) -> Callable[[], None]:
    rt = get_runtime(name)

    def once() -> None:
        with rt.start(ContainerSpec(image=IMAGE)) as c:
            c.exec(["/.containersec/busybox", "true"])

    return once


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated runtime rows to measure")
    args = ap.parse_args()
    assert os.geteuid() == 0, "run as root"
    bare: dict[str, Callable[[], None]] = {
        "docker": cli_engine(["docker", "-H", "unix:///var/run/docker.sock"]),
        "podman": cli_engine(["podman"]),
        "podman-rootless": cli_engine(as_user(["podman"])),
        "nspawn": cli_nspawn,
        "lxc": cli_lxc,
        "containerd": cli_containerd(),
        "portable": lazy(cli_portable),  # boots a systemd: only when measured
        "incus": lazy(cli_incus),  # trixie and later
        "podman:runc": cli_engine(["podman", "--runtime", "runc"]),
        "docker:runc": cli_engine(["docker", "-H", "unix:///var/run/docker.sock"]),
        "docker:runsc": cli_engine(
            ["docker", "-H", "unix:///var/run/docker.sock"], ("--runtime", "runsc")
        ),
        "podman:runsc": cli_engine(
            ["podman", "--runtime", "runsc", "--runtime-flag", "network=none"]
        ),
    }
    if args.only:
        wanted = args.only.split(",")
        bare = {k: v for k, v in bare.items() if k in wanted}
    print("| runtime | adapter: start + exec + stop | bare CLI | ratio |")
    print("|---|---|---|---|")
    for name, cli in bare.items():
        if not get_runtime(name).availability().available:
            print(f"| {name} | unavailable | | |")
            continue
        ours, theirs = adapter(name), cli
        ours()  # warm up (service start, image cache)
        theirs()
        a, b = [], []
        for _ in range(args.n):  # interleaved: both see the same machine noise
            a.append(timed(ours))
            b.append(timed(theirs))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {name} | {ma * 1000:.0f} ms | {mb * 1000:.0f} ms | {ma / mb:.2f} |")
    close_all()


if __name__ == "__main__":
    main()
