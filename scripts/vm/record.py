"""Runs INSIDE the VM (scripts/vm/inside record, after setup): for one running container
of each runtime and case, saves what the product's parsers read from the host, so unit
tests can use the trixie host's real files:

    OUT/<runtime>-<case>/proc/{status,cgroup,mountinfo,uid_map,gid_map,attr_current}
    OUT/<runtime>-<case>/cgroup/<path from the root>/{memory.max,pids.max,cpu.max,
                                                      cgroup.controllers,...}
    OUT/<runtime>-<case>/meta.json   (the command, host pid, cgroup path, engine version)
    OUT/lsm, OUT/host.json, OUT/host_mountinfo

Containers are started with the engines' own CLIs (not through the product), so the files
show where each engine really puts them; docker-userns and docker-rootless are the
product's own daemons (``docker_daemons up``), driven by the docker CLI. Cases: default, limits (--memory 64m
--pids-limit 32 --cpus 0.5 or the unit properties), privileged (docker, podman).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

IMAGE = "containersec/probe"
USER = os.environ.get("CONTAINERSEC_ROOTLESS_USER", "containersec")
STATE = Path(os.environ.get("CONTAINERSEC_STATE", "/var/lib/containersec"))
CGROOT = Path("/sys/fs/cgroup")
PROC_FILES = ("status", "cgroup", "mountinfo", "uid_map", "gid_map", "attr/current")
CG_FILES = (
    "cgroup.controllers",
    "cgroup.subtree_control",
    "cgroup.type",
    "memory.max",
    "memory.high",
    "memory.swap.max",
    "pids.max",
    "cpu.max",
    "cpu.weight",
)
LIMITS_OCI = ["--memory", "64m", "--pids-limit", "32", "--cpus", "0.5"]
LIMITS_UNIT = ["-p", "MemoryMax=64M", "-p", "TasksMax=32", "-p", "CPUQuota=50%"]
CASES: dict[str, list[str]] = {"default": [], "limits": LIMITS_OCI, "privileged": ["--privileged"]}


def sh(argv: list[str], **kw: object) -> str:
    kw.setdefault("cwd", "/")  # the rootless user cannot enter the checkout (/root/src)
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise RuntimeError(f"{argv}: exit {out.returncode}: {out.stderr.strip()[:400]}")
    return str(out.stdout).strip()


def as_user(argv: list[str]) -> list[str]:
    uid = sh(["id", "-u", USER])
    rt = f"/run/user/{uid}"
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={sh(['id', '-g', USER])}",
        "--init-groups",
        "env",
        "-i",
        f"HOME=/home/{USER}",
        f"USER={USER}",
        "PATH=/usr/bin:/bin",
        f"XDG_RUNTIME_DIR={rt}",
        f"DBUS_SESSION_BUS_ADDRESS=unix:path={rt}/bus",
        *argv,
    ]


def save(pid: int, dest: Path, meta: dict[str, object]) -> None:
    (dest / "proc").mkdir(parents=True, exist_ok=True)
    for name in PROC_FILES:
        try:
            data = Path(f"/proc/{pid}/{name}").read_bytes()
        except OSError as e:
            data = f"# unreadable: {e}\n".encode()
        (dest / "proc" / name.replace("/", "_")).write_bytes(data)
    cg = ""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            cg = line[3:]
    parts = [p for p in cg.split("/") if p]
    for i in range(len(parts) + 1):
        rel = "/".join(parts[:i])
        src = CGROOT / rel
        out = dest / "cgroup" / (rel or ".")
        out.mkdir(parents=True, exist_ok=True)
        for f in CG_FILES:
            if (src / f).exists():
                shutil.copyfile(src / f, out / f)
    meta.update({"host_pid": pid, "cgroup": cg})
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def pid_of(argv: list[str]) -> int:
    return int(sh(argv))


def wait_pid(get: Callable[[], int], what: str) -> int:
    for _ in range(100):
        try:
            pid = get()
            if pid > 0:
                return pid
        except (RuntimeError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: no main pid")


def record_oci(out: Path, runtime: str, base: list[str]) -> None:
    version = (  # `docker info`: rootless Docker 26 panics serving /version (moby#47085)
        sh([*base, "info", "--format", "{{.ServerVersion}}"])
        if base[0] == "docker"
        else sh([*base, "version", "--format", "{{.Version}}"])
    )
    for case, flags in CASES.items():
        if case == "privileged" and runtime.endswith(("rootless", "userns")):
            continue
        name = f"csrec-{runtime}-{case}"
        subprocess.run([*base, "rm", "-f", name], capture_output=True, check=False, cwd="/")
        argv = [
            *base,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--pull=never",
            *flags,
            IMAGE,
            "sleep",
            "600",
        ]
        try:
            sh(argv)
            pid = wait_pid(partial(pid_of, [*base, "inspect", "-f", "{{.State.Pid}}", name]), name)
            save(
                pid,
                out / f"{runtime}-{case}",
                {"runtime": runtime, "version": version, "argv": argv},
            )
            print(f"record: {runtime}-{case}: pid {pid}", flush=True)
        except RuntimeError as e:
            (out / f"{runtime}-{case}").mkdir(parents=True, exist_ok=True)
            (out / f"{runtime}-{case}" / "error.txt").write_text(str(e) + "\n")
            print(f"record: {runtime}-{case}: FAILED: {e}", flush=True)
        finally:
            subprocess.run(
                [*base, "rm", "-f", "-t", "0", name], capture_output=True, check=False, cwd="/"
            )


def record_nspawn(out: Path) -> None:
    rootfs_src = STATE / "images/containersec_probe/rootfs"
    version = sh(["systemd-nspawn", "--version"]).splitlines()[0]
    limits = [p.replace("-p", "--property") for p in LIMITS_UNIT]
    for case, props in (("default", []), ("limits", limits)):
        name = f"csrec-nspawn-{case}"
        root = Path(f"/var/tmp/{name}")
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(rootfs_src, root, symlinks=True)
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--machine={name}",
            "-D",
            str(root),
            "--private-users=pick",
            "--private-users-ownership=map",
            "--console=pipe",
            *props,
            "/bin/sleep",
            "600",
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            pid = wait_pid(
                partial(pid_of, ["machinectl", "show", name, "-p", "Leader", "--value"]), name
            )
            save(
                pid, out / f"nspawn-{case}", {"runtime": "nspawn", "version": version, "argv": argv}
            )
            print(f"record: nspawn-{case}: pid {pid}", flush=True)
        except RuntimeError as e:
            err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            (out / f"nspawn-{case}").mkdir(parents=True, exist_ok=True)
            (out / f"nspawn-{case}" / "error.txt").write_text(f"{e}\n{err}")
            print(f"record: nspawn-{case}: FAILED: {e} {err}", flush=True)
        finally:
            subprocess.run(["machinectl", "terminate", name], capture_output=True, check=False)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(root, ignore_errors=True)


def record_systemd_run(out: Path) -> None:
    version = sh(["systemctl", "--version"]).splitlines()[0]
    for case, props in (("default", []), ("limits", LIMITS_UNIT)):
        unit = f"csrec-{case}.service"
        subprocess.run(["systemctl", "stop", unit], capture_output=True, check=False)
        argv = ["systemd-run", f"--unit={unit}", "-p", "User=daemon", *props, "/bin/sleep", "600"]
        try:
            sh(argv)
            pid = wait_pid(
                partial(pid_of, ["systemctl", "show", unit, "-p", "MainPID", "--value"]), unit
            )
            save(
                pid,
                out / f"systemd-run-{case}",
                {"runtime": "systemd-run", "version": version, "argv": argv},
            )
            print(f"record: systemd-run-{case}: pid {pid}", flush=True)
        except RuntimeError as e:
            (out / f"systemd-run-{case}").mkdir(parents=True, exist_ok=True)
            (out / f"systemd-run-{case}" / "error.txt").write_text(str(e) + "\n")
            print(f"record: systemd-run-{case}: FAILED: {e}", flush=True)
        finally:
            subprocess.run(["systemctl", "stop", unit], capture_output=True, check=False)


def main() -> int:
    out = Path(sys.argv[1])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile("/sys/kernel/security/lsm", out / "lsm")
    shutil.copyfile("/proc/self/mountinfo", out / "host_mountinfo")  # where cgroup2 is
    host = {
        "uname": os.uname().release,
        "os": Path("/etc/os-release").read_text(),
        "cgroup_root_controllers": (CGROOT / "cgroup.controllers").read_text().strip(),
    }
    (out / "host.json").write_text(json.dumps(host, indent=2) + "\n")
    record_oci(out, "docker", ["docker"])
    record_oci(out, "podman", ["podman"])
    record_oci(out, "podman-rootless", as_user(["podman"]))
    for daemon in ("docker-userns", "docker-rootless"):  # the product's own daemons
        up = [sys.executable, "-m", "pytest_containersec.runtimes.docker.docker_daemons"]
        url = sh([*up, "up", daemon, "--lease-pid", str(os.getpid())])
        try:
            record_oci(out, daemon, ["docker", "-H", url])
        finally:
            sh([*up, "down", daemon, "--lease-pid", str(os.getpid())])
    record_nspawn(out)
    record_systemd_run(out)
    failed = sorted(p.parent.name for p in out.glob("*/error.txt"))
    print(f"record: done; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
