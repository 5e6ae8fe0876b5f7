"""A container with CAP_SYS_ADMIN (root in its user namespace) attacks the host paths the
harness shares with it: its agent folder. Nothing outside its own state folder may be
written, followed, deleted or killed, and a neighbour started after it in the same session
gets the same Facts as one with no hostile neighbour.

Runtimes with an agent folder: nspawn (default capabilities include CAP_SYS_ADMIN in its
user namespace; RUN is bind-mounted read-write and idmapped, so root inside writes as
host root) and systemd-run (the booted manager's units; RUN is read-only there, but a
unit writes its FIFOs and names its command's pid). Docker and Podman share only the probe
folder (tested with the probe copy) and exec through the engine: nothing here applies.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec.errors import ExecTimeout
from pytest_containersec.linux import caps
from pytest_containersec.model import Facts
from pytest_containersec.runtimes import Runtime, procs
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

B = PROBE_BUSYBOX
RUN = "/.containersec/run"


def comparable(f: Facts) -> dict[str, Any]:
    """What must not depend on a neighbour (ids, paths and ranges differ per container)."""
    return {
        "user": (f.user.uid, f.user.gid, f.user.groups),
        "capabilities": f.capabilities,
        "seccomp": f.seccomp,
        "no_new_privs": f.no_new_privs,
        "rootfs_read_only": f.rootfs_read_only,
        "limits": (f.cgroup.memory_max, f.cgroup.pids_max, f.cgroup.cpu_max),
        "access": f.access,
        "operations": f.operations,
        "namespaces": f.namespaces,
        "engine_sockets": f.engine_sockets,
        "host_root_mounts": f.host_root_mounts,
        "mismatches": sorted((m.source, m.field) for m in f.mismatches),
    }


def sentinel(tmp_path: Path) -> Path:
    d = tmp_path / "host-folder"
    d.mkdir()
    (d / "keep").write_text("host file\n")
    os.chmod(tmp_path, 0o755)
    return d


def untouched(d: Path) -> None:
    assert sorted(os.listdir(d)) == ["keep"], "the host wrote into a folder the container named"
    assert (d / "keep").read_text() == "host file\n"


# -- nspawn --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nspawn() -> Runtime:
    return runtime_or_skip("nspawn")


SWAP_REQUEST = (
    # the request folder becomes a symlink to a host folder; FIFOs and pid become symlinks
    # there too; the agent's answers are lost, so the exec times out and the host cleans up
    f"d=$({B} ls -d {RUN}/[0-9]* | {B} head -n1); {B} mv $d {RUN}/moved; "
    f"{B} ln -s %(target)s $d; for f in out err rc pid; do {B} rm -f {RUN}/moved/$f; "
    f"{B} ln -s %(target)s/keep {RUN}/moved/$f; done; {B} ln -sf %(target)s {RUN}/req.x; "
    f"{B} sleep 30"
)


def test_nspawn_hostile_agent_folder_reaches_nothing_on_the_host(
    nspawn: Runtime, tmp_path: Path
) -> None:
    target = sentinel(tmp_path)
    with nspawn.start(ContainerSpec()) as before:
        baseline = comparable(before.facts())
    with nspawn.start(ContainerSpec()) as hostile:
        assert "CAP_SYS_ADMIN" in hostile.facts().capabilities.effective
        with pytest.raises(ExecTimeout):
            hostile.exec([B, "sh", "-c", SWAP_REQUEST % {"target": target}], timeout=3)
        untouched(target)
        # the folder stays usable for the next exec, and so does the container
        assert hostile.exec([B, "echo", "still"], timeout=10).stdout.strip() == "still"
        with nspawn.start(ContainerSpec()) as neighbour:
            assert comparable(neighbour.facts()) == baseline
    untouched(target)


def test_nspawn_forged_pid_kills_nothing_above_the_main_process(nspawn: Runtime) -> None:
    """The command rewrites its pid file with pid 1 (nspawn's stub init) and hangs: the
    host once killed that and its parent, systemd-nspawn itself."""
    forge = f"{B} sleep 0.3; for d in {RUN}/[0-9]*; do echo 1 > $d/pid; done; {B} sleep 30"
    with nspawn.start(ContainerSpec()) as hostile:
        nspawn_pid = procs.parent(procs.parent(hostile.host_pid) or 0)
        with pytest.raises(ExecTimeout):
            hostile.exec([B, "sh", "-c", forge], timeout=2)
        time.sleep(0.3)
        assert nspawn_pid is not None
        assert os.path.exists(f"/proc/{nspawn_pid}"), "the host killed systemd-nspawn"
        assert os.path.exists(f"/proc/{hostile.host_pid}"), "the host killed the main process"
        assert hostile.exec([B, "true"], timeout=10).rc == 0


# -- systemd-run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_run() -> Runtime:
    return runtime_or_skip("systemd-run")


def fake_agent(victim_inner: int) -> list[str]:
    """A unit whose main process replaces its agent: every request gets the victim's pid
    as "my command's pid" on the rc FIFO, which stays open (the exec times out)."""
    script = (
        f"n=$({B} sed -n 's#.*/\\([^/]*\\)\\.service$#\\1#p' /proc/self/cgroup | {B} head -n1); "
        f"run={RUN}/$n; "
        f"for c in $({B} cat /proc/$$/task/*/children); do kill -9 $c; done; "
        f'exec 3<>"$run/req"; '
        f'while read -r id <&3; do ( exec 4>"$run/$id/rc"; echo {victim_inner} >&4; '
        f"{B} sleep 30 ) & done"
    )
    return [B, "sh", "-c", script]


def test_systemd_run_forged_pid_kills_no_neighbour(systemd_run: Runtime) -> None:
    with systemd_run.start(ContainerSpec(privileged=True)) as before:
        baseline = comparable(before.facts())
    with systemd_run.start(ContainerSpec(privileged=True)) as neighbour:
        inner = procs.nspid(neighbour.host_pid)[-1]
        with systemd_run.start(ContainerSpec(privileged=True, command=fake_agent(inner))) as bad:
            status = Path(f"/proc/{bad.host_pid}/status").read_text()
            eff = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:"))
            assert "CAP_SYS_ADMIN" in caps.decode_mask(eff)
            time.sleep(0.5)  # its main process replaced the agent
            with pytest.raises(ExecTimeout):
                bad.exec([B, "true"], timeout=2)
            time.sleep(0.3)
            assert os.path.exists(f"/proc/{neighbour.host_pid}"), "the host killed the neighbour"
            assert comparable(neighbour.facts(refresh=True)) == baseline
