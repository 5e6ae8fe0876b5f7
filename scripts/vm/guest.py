"""Runs INSIDE the VM (started by /usr/local/sbin/containersec-vm-boot after multi-user and
docker.service): copies the read-only shared checkout to /root/src, installs the package
into the image's venv without network, runs the host's command there with its timeout.

Its stdout/stderr is /mnt/results/output.log, which the host streams as it grows; the
boot script writes the exit status to /mnt/results/status and powers off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SRC = Path("/mnt/src")
WORK = Path("/root/src")
VENV = Path("/opt/containersec-venv")
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".import_linter_cache",
    "reports",
    "*.egg-info",
)


def say(msg: str) -> None:
    up = Path("/proc/uptime").read_text().split()[0]
    print(f"vm guest [{float(up):6.1f}s]: {msg}", flush=True)


def service_images() -> Path | None:
    """Mount the host's service-image tarballs (9p tag "service", when shared)."""
    tags = Path("/sys/bus/virtio/drivers/9pnet_virtio").glob("*/mount_tag")
    if not any(t.read_bytes().rstrip(b"\0\n") == b"service" for t in tags):
        return None
    target = Path("/mnt/service-images")
    target.mkdir(parents=True, exist_ok=True)
    opts = "trans=virtio,version=9p2000.L,msize=524288,ro"
    done = subprocess.run(["mount", "-t", "9p", "-o", opts, "service", str(target)], check=False)
    if done.returncode != 0:
        say("cannot mount the service images share; their tests will fail")
        return None
    say(f"service images shared from the host at {target}")
    return target


def main() -> int:
    results = Path(sys.argv[1])
    cmd = json.loads((results / "command.json").read_text())
    argv: list[str] = cmd["argv"]
    timeout = float(cmd["timeout"])
    say(f"copying the checkout to {WORK}")
    if WORK.exists():
        shutil.rmtree(WORK)
    packed = results / "checkout.tar"  # vm.py pack_checkout: one file over 9p, not ~1400
    if packed.is_file():
        WORK.mkdir()
        subprocess.run(["tar", "-xf", str(packed), "-C", str(WORK)], check=True)
    else:
        shutil.copytree(SRC, WORK, symlinks=True, ignore=IGNORE)
    (WORK / ".venv").symlink_to(VENV)
    # The image's venv has the package installed editable from WORK (entry points
    # registered at build time): its .pth file points here (no Python start: slow in TCG).
    pths = [p.read_text() for p in VENV.glob("lib/python3*/site-packages/*.pth")]
    if not any(str(WORK) in t.splitlines() for t in pths):
        say(f"the venv has no editable install from {WORK} (rebuild: scripts/vm/vm.py build)")
        return 125
    (VENV / ".containersec-installed").touch()  # scripts/setup: the venv is current
    env = {
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "CONTAINERSEC_VM": "1",
        "CONTAINERSEC_VENV": str(VENV),
        "CONTAINERSEC_VM_RESULTS": str(results),
        "PYTHONUNBUFFERED": "1",
    }
    shared = service_images()
    if shared is not None:
        env["CONTAINERSEC_SERVICE_IMAGES"] = str(shared)
    env.update(cmd.get("env", {}))
    say(f"running {argv} (timeout {timeout:.0f} s)")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=WORK, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        say(f"the command did not finish within {timeout:.0f} s: killed")
        return 124
    if rc < 0:
        rc = 128 - rc  # killed by a signal, as a shell reports it
    say(f"exit status {rc} after {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
