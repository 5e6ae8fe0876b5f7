"""systemd-nspawn adapter against the real engine (root; skipped outside CI when missing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec.errors import ContainerStartError, ExecTimeout, ImageNotFound
from pytest_containersec.linux import caps, session
from pytest_containersec.runtimes import probe_copy
from pytest_containersec.runtimes.nspawn.nspawn import NspawnContainer, NspawnRuntime, state_root
from pytest_containersec.runtimes.nspawn.nspawn_image import cache_key
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

CONFINED = ContainerSpec(user="1000", cap_drop=["ALL"], memory="64m", pids_limit=50, read_only=True)


@pytest.fixture(scope="module")
def rt() -> NspawnRuntime:
    r = runtime_or_skip("nspawn")
    assert isinstance(r, NspawnRuntime)
    return r


@pytest.fixture(scope="module")
def confined(rt: NspawnRuntime) -> Iterator[NspawnContainer]:
    c = rt.start(CONFINED)
    assert isinstance(c, NspawnContainer)
    yield c
    c.stop()


def status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def processes_mentioning(name: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if name.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def leftovers(c: NspawnContainer) -> list[str]:
    left = [str(d) for d in c.cgroups if d.exists()]
    left += [str(c.state)] if c.state.exists() else []
    probe = probe_copy.copies_root() / c.name
    left += [str(probe)] if probe.exists() else []
    left += [f"pid {p}" for p in processes_mentioning(c.name)]
    if os.path.exists(f"/proc/{c.host_pid}"):
        left.append(f"host_pid {c.host_pid}")
    return left


def test_exec_runs_as_the_user(confined: NspawnContainer) -> None:
    r = confined.exec(["id"])
    assert r.rc == 0, r
    assert r.stdout.startswith("uid=1000"), r.stdout


def test_host_view_of_main_process(confined: NspawnContainer) -> None:
    st = status(Path(f"/proc/{confined.host_pid}/status").read_text())
    uid_map = Path(f"/proc/{confined.host_pid}/uid_map").read_text().split()
    inside, outside = int(uid_map[0]), int(uid_map[1])
    assert inside == 0
    assert outside > 0
    assert st["Uid"].split()[0] == str(outside + 1000)
    assert st["CapEff"] == "0000000000000000"
    assert st["CapPrm"] == "0000000000000000"
    assert st["CapBnd"] == "0000000000000000"
    assert st["Seccomp"] == "2"


def test_memory_limit_visible_from_host_and_inside(confined: NspawnContainer) -> None:
    cgroup = Path(f"/proc/{confined.host_pid}/cgroup").read_text()
    m = re.search(r"^\d+:[^:]*\bmemory\b[^:]*:(\S+)$", cgroup, re.M)
    if m:  # cgroup v1
        host = Path(f"/sys/fs/cgroup/memory{m.group(1)}/memory.limit_in_bytes")
        assert int(host.read_text()) == 64 << 20
        inside = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    else:
        rel = re.search(r"^0::(\S+)$", cgroup, re.M)
        assert rel
        # v2 under systemd: the limit sits on the machine's scope, above the payload's
        # own cgroup (which says "max"): the effective limit is the lowest up the tree
        root = Path("/sys/fs/cgroup")
        leaf = root / rel.group(1).lstrip("/")
        chain = [leaf, *(p for p in leaf.parents if root in p.parents)]
        texts = [f.read_text().strip() for d in chain if (f := d / "memory.max").is_file()]
        assert min(int(t) for t in texts if t != "max") == 64 << 20
        # inside, the cgroup namespace's root is the payload's own cgroup: "max" there
        # when the limit sits on the scope above (systemd), the limit itself otherwise
        r = confined.probe_exec(["cat", "/sys/fs/cgroup/memory.max"])
        assert r.rc == 0, r
        assert r.stdout.strip() in ("max", str(64 << 20))
        return
    r = confined.probe_exec(["cat", inside])
    assert r.rc == 0, r
    assert int(r.stdout) == 64 << 20


def test_exec_has_the_main_process_confinement(confined: NspawnContainer) -> None:
    r = confined.exec(["cat", "/proc/self/status"])
    assert r.rc == 0, r
    inside = status(r.stdout)
    host = status(Path(f"/proc/{confined.host_pid}/status").read_text())
    for key in ("Seccomp", "Seccomp_filters", "CapBnd", "CapEff", "CapInh", "NoNewPrivs"):
        assert inside[key] == host[key], key
    assert inside["Uid"].split()[0] == "1000"


def test_exec_output_rc_and_argv_are_passed_verbatim(confined: NspawnContainer) -> None:
    weird = ["a b", "", "$(id)", "'\"", "x\ny", "*"]
    r = confined.probe_exec(
        ["sh", "-c", 'for a in "$@"; do printf "[%s]" "$a"; done', "sh", *weird]
    )
    assert r.stdout == "".join(f"[{a}]" for a in weird)
    r = confined.probe_exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.rc, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = confined.exec(["no-such-command"])
    assert r.rc == 127
    assert "not found" in r.stderr


def test_read_only_rootfs(confined: NspawnContainer) -> None:
    r = confined.probe_exec(["touch", "/x"])
    assert r.rc != 0
    assert "Read-only" in r.stderr


def test_exec_timeout_kills_the_command(confined: NspawnContainer) -> None:
    secs = str(900000 + os.getpid() % 99999)
    t = time.monotonic()
    with pytest.raises(ExecTimeout):
        confined.probe_exec(["sleep", secs], timeout=1)
    assert time.monotonic() - t < 1 + 5
    time.sleep(0.1)
    assert not [p for p in processes_mentioning(f"sleep\0{secs}\0")]
    assert confined.exec(["true"]).rc == 0  # the agent still serves


def test_exec_latency(confined: NspawnContainer) -> None:
    times = []
    for _ in range(5):
        t = time.monotonic()
        confined.exec(["true"])
        times.append(time.monotonic() - t)
    assert sorted(times)[2] < 0.5  # a ratio would be better; this only catches a hang


def test_stop_leaves_nothing(rt: NspawnRuntime) -> None:
    c = rt.start(ContainerSpec(command=["sleep", "1000"], pids_limit=20))
    assert isinstance(c, NspawnContainer)
    # the image's own sleep, found in $PATH inside (not the probe busybox's applet)
    assert Path(f"/proc/{c.host_pid}/cmdline").read_bytes() == b"/bin/sleep\x001000\x00"
    c.stop()
    assert leftovers(c) == []
    c.stop()  # idempotent


def test_privileged_and_unconfined(rt: NspawnRuntime) -> None:
    with rt.start(ContainerSpec(privileged=True)) as c:
        st = status(Path(f"/proc/{c.host_pid}/status").read_text())
        assert st["Seccomp"] == "0"
        assert caps.decode_mask(st["CapBnd"]) == tuple(sorted(caps.ALL_CAPS))
    with rt.start(ContainerSpec(seccomp="unconfined")) as c:
        assert status(Path(f"/proc/{c.host_pid}/status").read_text())["Seccomp"] == "0"
        assert c.declared()["seccomp"] == "unconfined"


def test_payload_that_exits_at_once_is_a_start_error(rt: NspawnRuntime) -> None:
    def ours() -> set[Path]:  # this session's folders (another worker's come and go)
        mine = f"containersec-{session.current().id}-"
        return {p for p in (state_root() / "nspawn").iterdir() if p.name.startswith(mine)}

    before = ours()
    with pytest.raises(ContainerStartError) as info:
        rt.start(ContainerSpec(command=["/.containersec/busybox", "false"]))
    assert info.value.runtime == "nspawn"
    assert info.value.exit_status not in (None, 0)
    with pytest.raises(ContainerStartError, match="not found"):
        rt.start(ContainerSpec(command=["no-such-binary"]))
    assert ours() == before


def test_unknown_image_is_image_not_found_quickly(rt: NspawnRuntime) -> None:
    t = time.monotonic()
    with pytest.raises(ImageNotFound):
        rt.start(ContainerSpec(image="containersec/does-not-exist:never"))
    assert time.monotonic() - t < 10


def test_image_exported_from_docker_once(rt: NspawnRuntime, tmp_path: Path) -> None:
    docker = pytest.importorskip("docker")
    try:
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=10)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"docker unavailable: {exc}")
    # an image without etc/os-release, usr/ or /tmp: nspawn needs them in the copy only
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/sh").symlink_to("/.containersec/busybox")
    image = f"containersec/nspawn-export-test:{os.getpid()}"
    tar = subprocess.run(["tar", "-C", str(tmp_path), "-c", "."], capture_output=True, check=True)
    subprocess.run(
        ["docker", "import", "-c", "ENV FOO=bar", "-", image], input=tar.stdout, check=True
    )
    cache = state_root() / "images" / cache_key(image)
    try:
        with rt.start(ContainerSpec(image=image, read_only=True)) as c:
            r = c.exec(["sh", "-c", "echo $FOO; test -e /etc/os-release && echo ok"])
            assert r.stdout == "bar\nok\n", r
            assert c.probe_exec(["test", "-e", "/.dockerenv"]).rc == 1
        assert (cache / "rootfs/bin").is_dir()
        assert not (cache / "rootfs/etc/os-release").exists()  # the cache stays as exported
        # The same name rebuilt: the next container runs the new image, not the cache's.
        (tmp_path / "rebuilt").write_text("2\n")
        tar = subprocess.run(
            ["tar", "-C", str(tmp_path), "-c", "."], capture_output=True, check=True
        )
        subprocess.run(
            ["docker", "import", "-c", "ENV FOO=baz", "-", image], input=tar.stdout, check=True
        )
        with rt.start(ContainerSpec(image=image, read_only=True)) as c:
            r = c.exec(["sh", "-c", "echo $FOO; cat /rebuilt"])
            assert r.stdout == "baz\n2\n", r
        assert (cache / "image-id").read_text() == f"docker:{client.images.get(image).id}"
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        client.images.remove(image, force=True)
        client.close()


def test_reap_removes_leftovers_of_a_dead_owner(rt: NspawnRuntime) -> None:
    c = rt.start(ContainerSpec())
    assert isinstance(c, NspawnContainer)
    rt.forget(c)  # as if this process had been killed
    (c.state / "owner").write_text("1.0")  # pid 1 with another start time: dead
    assert c.probe_copy is not None
    (c.probe_copy.root / "owner").write_text("1.0")
    rt.reap()  # another session's reap (xdist) may get there first: what counts is that it is gone
    probe_copy.reap()  # what every session's reap does after the runtime's
    assert c.proc is not None
    c.proc.wait(timeout=10)  # our child, killed by the reaper: collect it
    deadline = time.monotonic() + 10  # a concurrent reaper may still be removing it
    while leftovers(c) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(c) == []


def test_declared(confined: NspawnContainer) -> None:
    d = confined.declared()
    assert d["argv"][0] == "systemd-nspawn"
    assert d["user"] == "1000"
    assert d["read_only"] is True
    assert d["memory"] == 64 << 20
    assert d["pids_limit"] == 50
    assert d["capabilities"] == []
    assert d["userns_mode"] == "auto"
