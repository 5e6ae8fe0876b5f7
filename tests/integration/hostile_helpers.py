"""Helpers for test_hostile.py: finding leftovers in every engine, a throw-away dockerd,
an image whose tools lie, and the process's peak memory."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from pytest_containersec.linux import hostinfo, session
from pytest_containersec.runtimes import procs
from pytest_containersec.runtimes.docker import docker_daemons as dd
from pytest_containersec.runtimes.nspawn.nspawn import NSPAWN_RUN, state_root
from pytest_containersec.runtimes.nspawn.nspawn_cgroup import CGROUP_ROOT, PARENT
from pytest_containersec.runtimes.podman import podman_service as svc
from pytest_containersec.runtimes.probe_copy import copies_root

CLI_TIMEOUT = 60


# -- leftovers ----------------------------------------------------------------------------


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd="/", timeout=CLI_TIMEOUT, check=False
    )


def as_rootless_user(argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
    """``argv`` run as the rootless user (when we are root), with that user's environment."""
    if os.geteuid() != 0:
        return argv, None
    pw = hostinfo.rootless_user()
    env = {"PATH": svc.SAFE_PATH, "HOME": pw.pw_dir, "XDG_RUNTIME_DIR": f"/run/user/{pw.pw_uid}"}
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *argv], env


def docker_urls() -> dict[str, str]:
    """The Docker daemons that answer here: runtime name -> URL."""
    out = {"docker": "unix:///var/run/docker.sock"}
    for name in (dd.USERNS, dd.ROOTLESS):
        with contextlib.suppress(Exception):
            daemon = dd.DockerDaemon(name)
            if daemon.answers():
                out[name] = daemon.url
    return {k: v for k, v in out.items() if svc.answers(Path(v.removeprefix("unix://")))}


# runtimes whose rootfs cache is exported from Docker's store (nspawn_image)
EXPORTS_FROM_DOCKER = ("nspawn", "lxc", "containerd", "portable")


class NameSet:
    """Container names of one runtime, found in text (listings, command lines)."""

    runtime: str

    def matches(self, text: str) -> list[str]:
        raise NotImplementedError


class Exact(NameSet):
    """These names (of another session's containers, say)."""

    def __init__(self, runtime: str, names: list[str]) -> None:
        self.runtime = runtime
        self.patterns = [re.compile(re.escape(n) + r"(?!\d)") for n in names]

    def matches(self, text: str) -> list[str]:
        return [m.group(0) for p in self.patterns for m in p.finditer(text)]


class Names(NameSet):
    """The names this session gives ``runtime``'s containers from now on (``since``
    excludes every earlier one): ``containersec-SESSION-RUNTIME-N`` with N > since."""

    def __init__(self, runtime: str) -> None:
        first = session.current().next_name(runtime)  # burns one number: ours start after it
        prefix, _, n = first.rpartition("-")
        self.runtime = runtime
        self.prefix = prefix + "-"
        self.since = int(n)
        self.pattern = re.compile(re.escape(self.prefix) + r"(\d+)")

    def matches(self, text: str) -> list[str]:
        return [m.group(0) for m in self.pattern.finditer(text) if int(m.group(1)) > self.since]


def engine_containers(names: NameSet) -> list[str]:
    """Containers (any state) with one of ``names`` in the store of ``names.runtime``."""
    rt, out = names.runtime, ""
    if rt in docker_urls():
        out = _run(["docker", "-H", docker_urls()[rt], "ps", "-a", "--format", "{{.Names}}"]).stdout
    elif rt in ("podman", "podman-rootless"):
        argv, env = ["podman", "ps", "-a", "--format", "{{.Names}}"], None
        if rt == "podman-rootless":
            argv, env = as_rootless_user(argv)
        out = _run(argv, env).stdout
    return [f"{rt}: container {n}" for n in names.matches(out)]


def host_leftovers(names: NameSet) -> list[str]:
    """State dirs, cgroups, nspawn's /run files and processes named after ``names``."""
    found: list[str] = []
    dirs = [state_root() / "nspawn", state_root() / "systemd-run", NSPAWN_RUN / "propagate"]
    dirs.append(state_root() / "portable")  # its booted systems, images and records
    dirs.append(copies_root())  # each container's probe folder
    dirs += [ctrl / PARENT for ctrl in CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []
    dirs.append(state_root() / "lxc")  # lxc: its lxcpath, and lxc.payload/monitor.NAME cgroups
    dirs.append(state_root() / "containerd")  # containerd: each container's files, cgroups
    dirs += [c / "containersec.containerd" for c in (CGROUP_ROOT, *CGROUP_ROOT.iterdir())]
    dirs += [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []
    for d in dirs:
        with contextlib.suppress(OSError):
            found += [f"{d}/{n}" for n in names.matches(" ".join(os.listdir(d)))]
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if names.matches(cmd) and alive(int(entry.name)):
            found.append(f"process {entry.name}: {cmd[:200]}")
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def leftovers(names: NameSet, pids: tuple[int, ...] = (), wait: float = 15.0) -> list[str]:
    """What is still there of the containers ``names`` covers and of ``pids``, after
    giving asynchronous teardown up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        found = [f"process {p} (a container's)" for p in pids if alive(p)]
        found += host_leftovers(names) + engine_containers(names)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


# -- peak memory --------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a list that holds, afterwards, the peak RSS growth in bytes over the block."""
    out: list[int] = []
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    yield out
    out.append((_status_kib("VmHWM") - before) * 1024)


# -- a dockerd of the test's own ----------------------------------------------------------


class Dockerd:
    """A second dockerd on its own socket, data root and exec root (stopped by the test)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.run = Path(f"/run/containersec-test-{tag}")
        self.data = Path(f"/var/lib/containersec-test-{tag}")
        self.socket = self.run / "dockerd.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: list[tuple[int, str]] = []

    def start(self) -> None:
        self.run.mkdir(mode=0o700, exist_ok=True)  # again after a kill: same roots
        self.socket.unlink(missing_ok=True)
        stale = self.run / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):  # this VM's PID 1 reaps late: a
            if not alive(int(stale.read_text())):  # zombie would look like a live containerd
                stale.unlink()
        (self.run / "daemon.json").write_text("{}\n")
        argv = [shutil.which("dockerd") or "/usr/sbin/dockerd", f"--host={self.url}",
                f"--data-root={self.data}", f"--exec-root={self.run / 'exec'}",
                f"--pidfile={self.run / 'dockerd.pid'}",
                f"--config-file={self.run / 'daemon.json'}", "--bridge=none",
                "--iptables=false", "--ip-masq=false", "--ip-forward=false",
                "--shutdown-timeout=2"]  # fmt: skip
        with open(self.run / "dockerd.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while not svc.answers(self.socket, timeout=1.0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_text = (self.run / "dockerd.log").read_text(errors="replace")[-3000:]
                self.cleanup()
                raise RuntimeError(f"test dockerd did not come up:\n{log_text}")
            time.sleep(0.1)

    def remember_tree(self) -> None:
        """Note containerd, shims and container processes (a SIGKILL orphans them)."""
        if self.proc is not None:
            pids = procs.descendants(self.proc.pid)
            pids += [p for p in _by_cmdline(str(self.run)) if p not in pids]
            self.tree = [(p, session.owner_token(p)) for p in pids]

    def kill(self) -> None:
        """The daemon dies at once (what a crash or an OOM kill does)."""
        assert self.proc is not None
        self.remember_tree()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.remember_tree()
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def container_ids(self) -> list[str]:
        d = self.data / "containers"
        return sorted(e.name for e in d.iterdir()) if d.is_dir() else []

    def cleanup(self) -> None:
        """Stop it and remove every trace: processes it left, their cgroups, mounts, roots."""
        self.stop()
        if not self.tree:
            self.remember_tree()
        ids = self.container_ids()
        cgroups = [d for cid in ids for d in CGROUP_ROOT.glob(f"*/docker/{cid}")]
        victims = self.tree + [(p, session.owner_token(p)) for p in _by_cmdline(str(self.run))]
        victims += [(p, session.owner_token(p)) for p in _cgroup_procs(cgroups)]
        for p, token in victims:
            if session.owner_alive(token):
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(alive(p) for p, _ in victims) and time.monotonic() < deadline:
            time.sleep(0.05)
        for cg in cgroups:
            with contextlib.suppress(OSError):
                cg.rmdir()
        for root in (self.run, self.data):
            for mnt in sorted(_mounts_under(root), key=len, reverse=True):
                _run(["umount", "-l", mnt])
            shutil.rmtree(root, ignore_errors=True)


def _cgroup_procs(dirs: list[Path]) -> list[int]:
    out: set[int] = set()
    for d in dirs:
        with contextlib.suppress(OSError, ValueError):
            out |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
    return sorted(out)


def _by_cmdline(needle: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
    return out


def _mounts_under(root: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt == str(root) or mnt.startswith(f"{root}/"):
            out.append(mnt)
    return out


# -- an image whose tools lie --------------------------------------------------------------

FAKE_STATUS = """Name:\tcat
Umask:\t0022
State:\tR (running)
Tgid:\t7
Ngid:\t0
Pid:\t7
PPid:\t1
TracerPid:\t0
Uid:\t1000\t1000\t1000\t1000
Gid:\t1000\t1000\t1000\t1000
FDSize:\t64
Groups:\t1000
NSpid:\t7
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000000000
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
"""

FAKE_C = r"""
#include <unistd.h>
static const char text[] = FAKE_TEXT;
int main(void) { return write(1, text, sizeof text - 1) == sizeof text - 1 ? 0 : 1; }
"""
# Where the fake goes: every tool a naive prober would use, and the probe's own mount point.
FAKE_PATHS = ("bin/sh", "bin/cat", "bin/busybox", "usr/bin/id", ".containersec/busybox")


def fake_elf(workdir: Path) -> bytes:
    """A static executable that prints FAKE_STATUS (a "clean", unprivileged process)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the fake tools (apt-get install gcc libc6-dev)")
    text = '"' + FAKE_STATUS.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    text = text.replace("\n", '\\n"\n"') + '"'
    src = workdir / "fake.c"
    src.write_text(FAKE_C.replace("FAKE_TEXT", text))
    out = workdir / "fake"
    r = _run([gcc, "-static", "-Os", "-s", "-o", str(out), str(src)])
    if r.returncode != 0:
        raise RuntimeError(f"gcc -static failed (apt-get install libc6-dev?):\n{r.stderr}")
    return out.read_bytes()


def fake_image_tar(elf: bytes) -> bytes:
    """A rootfs tarball: the fake as every tool, an /etc/passwd that calls root ``app``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = sorted({str(Path(p).parent) for p in FAKE_PATHS} | {"etc", "tmp", "usr"})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        files = {p: (elf, 0o755) for p in FAKE_PATHS}
        files["etc/passwd"] = (b"app:x:0:0:app:/:/bin/sh\n", 0o644)
        files["etc/group"] = (b"app:x:0:\n", 0o644)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_cli(url: str, *args: str, stdin: bytes | None = None) -> None:
    r = subprocess.run(["docker", "-H", url, *args], input=stdin, capture_output=True,
                       timeout=CLI_TIMEOUT, check=False)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"docker -H {url} {' '.join(args)}: {r.stderr.decode()[-500:]}")


def docker_ps(url: str) -> list[str]:
    """Names of every container (any state) of the daemon at ``url``."""
    r = _run(["docker", "-H", url, "ps", "-a", "--format", "{{.Names}}"])
    if r.returncode != 0:
        raise RuntimeError(f"docker -H {url} ps: {r.stderr[-500:]}")
    return r.stdout.split()


def podman_cli(rootless: bool, *args: str, stdin: bytes | None = None) -> None:
    argv, env = ["podman", *args], None
    if rootless:
        argv, env = as_rootless_user(argv)
    r = subprocess.run(argv, input=stdin, capture_output=True, env=env, cwd="/",
                       timeout=CLI_TIMEOUT, check=False)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.decode()[-500:]}")


def import_image(runtime: str, tar: bytes, tag: str) -> None:
    """``tag`` from ``tar`` in the store ``runtime`` uses (nspawn: Docker's, it exports)."""
    if runtime in ("podman", "podman-rootless"):
        podman_cli(runtime == "podman-rootless", "import", "-", tag, stdin=tar)
        return
    from pytest_containersec.runtimes import get_runtime
    from pytest_containersec.runtimes.docker.docker import DockerRuntime

    rt = get_runtime("docker" if runtime in EXPORTS_FROM_DOCKER else runtime)
    assert isinstance(rt, DockerRuntime)
    rt.client  # noqa: B018 - starts an on-demand daemon (docker-userns, docker-rootless)
    docker_cli(rt.base_url, "import", "-", tag, stdin=tar)


def remove_image(runtime: str, tag: str) -> None:
    """Remove ``tag`` from the store (and nspawn's rootfs cache); quiet if it is gone."""
    with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
        if runtime in ("podman", "podman-rootless"):
            podman_cli(runtime == "podman-rootless", "rmi", "-f", tag)
        else:
            if runtime == "containerd":
                from pytest_containersec.runtimes import get_runtime
                from pytest_containersec.runtimes.containerd.containerd import ContainerdRuntime
                from pytest_containersec.runtimes.containerd.containerd_spec import image_ref

                ctr = get_runtime(runtime)
                assert isinstance(ctr, ContainerdRuntime)
                ctr.ctr("images", "rm", image_ref(tag))
            if runtime in EXPORTS_FROM_DOCKER:
                from pytest_containersec.runtimes.nspawn.nspawn_image import cache_key

                shutil.rmtree(state_root() / "images" / cache_key(tag), ignore_errors=True)
            url = docker_urls().get("docker" if runtime in EXPORTS_FROM_DOCKER else runtime)
            if url is not None:
                docker_cli(url, "rmi", "-f", tag)
