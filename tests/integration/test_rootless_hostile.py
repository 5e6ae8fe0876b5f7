"""The real rootless user against root: links and forged records it plants in its own
runtime folder (where the daemons' records once lived) change nothing root writes, reads
or stops, on a real docker-rootless daemon (rootlesskit) and the podman-rootless reaper."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec.linux import session
from pytest_containersec.runtimes import procs
from pytest_containersec.runtimes.docker import docker_daemons as dd
from pytest_containersec.runtimes.docker.docker import DockerRuntime
from pytest_containersec.runtimes.podman import podman_service as svc
from pytest_containersec.spec import ContainerSpec

from . import hostile_helpers as h
from .conftest import runtime_or_skip
from .test_docker_daemons import isolated

DEAD = "999999999.1"


def as_user(*argv: str) -> None:
    cmd, env = h.as_rootless_user(list(argv))
    subprocess.run(cmd, env=env, check=True, cwd="/", timeout=30, capture_output=True)


@pytest.fixture
def victims(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A root-only host file and a root process the user would like root to harm."""
    f = session.STATE_DIR / f"test-victim-{secrets.token_hex(4)}"
    f.write_text("host data\n")
    f.chmod(0o600)
    proc = subprocess.Popen(["sleep", "300"])
    yield f, proc
    proc.kill()
    proc.wait()
    f.unlink()


def stop_isolated(cfg: dd.DaemonConfig) -> None:
    record = dd.Record.read(cfg.path(".json"))
    if record is not None and record.running:
        procs.stop_tree(record.pid, record.token)
    data = next(a.split("=", 1)[1] for a in cfg.argv if a.startswith("--data-root="))
    for d in (data, cfg.run_dir, cfg.user_dir):
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def plant(folder: Path, stem: str, victim: Path, pid: int) -> None:
    """As the user: links where root once wrote, a record naming ``pid`` (its real token)."""
    forged = json.dumps({"pid": pid, "token": session.owner_token(pid), "owner": DEAD,
                         "socket": str(folder / f"{stem}.sock"), "log": str(victim)})  # fmt: skip
    as_user("ln", "-sfn", str(victim), str(folder / f"{stem}.log"))
    as_user("ln", "-sfn", str(victim), str(folder / f"{stem}.daemon.json"))
    as_user("sh", "-c", f"printf '%s' '{forged}' > {folder / f'{stem}.json'}")


def test_docker_rootless_daemon_ignores_what_its_user_planted(
    victims: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    runtime_or_skip(dd.ROOTLESS)
    victim, proc = victims
    cfg = isolated(dd.ROOTLESS, secrets.token_hex(4))
    assert cfg.user is not None
    assert cfg.user_dir is not None
    as_user("mkdir", "-p", str(cfg.user_dir))
    plant(cfg.user_dir, dd.ROOTLESS, victim, proc.pid)
    rt = DockerRuntime(dd.ROOTLESS, daemon=dd.DockerDaemon(dd.ROOTLESS, lambda: cfg))
    try:
        _ = rt.client  # starts the isolated daemon
        with open(session.STATE_DIR / "images" / "containersec_probe.tar", "rb") as fh:
            argv = ["/usr/bin/docker", "-H", f"unix://{cfg.socket}", "import", "-",
                    "containersec/probe"]  # fmt: skip
            subprocess.run(argv, stdin=fh, check=True, capture_output=True, timeout=120)
        c = rt.start(ContainerSpec(cap_drop=["ALL"]))
        assert os.stat(f"/proc/{c.host_pid}").st_uid == cfg.user.uid  # the user's, checked
        for name in (".json", ".log", ".daemon.json"):
            assert os.lstat(cfg.path(name)).st_uid == 0
        rt.close()
    finally:
        rt.close()
        stop_isolated(cfg)
    assert victim.read_text() == "host data\n"
    assert proc.poll() is None
    assert not cfg.socket.exists()


def test_podman_rootless_reaper_ignores_a_record_its_user_forged(
    victims: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    rt = runtime_or_skip("podman-rootless")
    victim, proc = victims
    user = svc.ServiceUser.for_mode(True)
    assert user is not None
    folder = svc.socket_dir(user)
    as_user("mkdir", "-p", str(folder))
    stem = f"podman-hostile{secrets.token_hex(3)}-1"
    plant(folder, stem, victim, proc.pid)
    try:
        rt.reap()
        assert proc.poll() is None
        assert victim.read_text() == "host data\n"
        assert svc.run_dir(user) != folder
    finally:
        for suffix in (".json", ".log", ".daemon.json"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
