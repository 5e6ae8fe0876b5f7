"""Masked kernel paths on real runtimes: every path's state is cross-checked against an
independent reading through the host's /proc/<pid>/root (stat, statvfs, listdir; not the
package's parser), expect.masked passes where an engine masks, and FAILS where nothing
covers the path (nspawn 252's /proc/keys, a privileged Podman container)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import expect
from pytest_containersec.linux import masking
from pytest_containersec.model import Facts
from pytest_containersec.observe.probe import DEFAULT_ACCESS
from pytest_containersec.runtimes import RUNTIME_NAMES, Container
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

# On this host every runc/crun-based runtime masks these (they exist in this kernel).
RUNC_MASKED_HERE = {
    "/proc/keys": "dev-null",
    "/proc/timer_list": "dev-null",
    "/proc/acpi": "tmpfs",
    "/sys/firmware": "tmpfs",
}
OCI_RUNTIMES = ("docker", "podman", "podman-rootless", "docker-userns", "docker-rootless")


@pytest.fixture(scope="module", params=RUNTIME_NAMES)
def observed(request: pytest.FixtureRequest) -> Iterator[tuple[Container, Facts]]:
    rt = runtime_or_skip(str(request.param))
    with rt.start(ContainerSpec()) as c:
        yield c, c.facts()


def nspawn_version() -> int:
    out = subprocess.run(["systemd-nspawn", "--version"], capture_output=True, text=True)
    return int(out.stdout.split()[1])


def independent(pid: int, path: str) -> str:
    """What the container's process sees at ``path``, read through /proc/<pid>/root."""
    p = f"/proc/{pid}/root{path}"
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3):
        return "null"
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0:
        return "inaccessible"
    read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    parent = os.stat(os.path.dirname(p))
    if stat.S_ISDIR(st.st_mode) and not os.listdir(p) and st.st_dev != parent.st_dev:
        return "empty-dir"  # another (empty) file system mounted over the kernel's folder
    return "ro" if read_only else "rw"


def test_every_path_agrees_with_an_independent_reading(observed: tuple[Container, Facts]) -> None:
    c, f = observed
    assert set(f.masked) == set(masking.STANDARD_PATHS)
    for path, m in f.masked.items():
        seen = independent(c.host_pid, path)
        if m.state == "absent":
            # the host kernel lacks it; inside there may be an empty mount point (nspawn
            # makes /sys/fs/selinux on its /sys tmpfs), never the kernel's file
            assert not os.path.lexists(path), path
            assert seen in ("missing", "ro", "rw"), path
        elif m.how == "dev-null":
            assert seen == "null", path
        elif m.how == "tmpfs":
            assert seen == "empty-dir", path
        elif m.how == "inaccessible":
            assert seen == "inaccessible", path
        elif m.state == "readonly":
            assert seen == "ro", path
        elif m.state == "exposed":
            assert seen == "rw", path
            if f"{path}:r" not in DEFAULT_ACCESS:  # probe-only keys stay out of access
                assert f.access.get(f"{path}:r") is None, path
        elif m.how == "no-kernel-fs":  # e.g. nspawn's /sys tmpfs skeleton (private network)
            assert seen == "missing", path
        # "unreachable" and "other-mount" are judged by the probe / the mount alone


def test_expect_masked_on_each_runtime(observed: tuple[Container, Facts]) -> None:
    c, f = observed
    if c.runtime in OCI_RUNTIMES:
        for path, how in RUNC_MASKED_HERE.items():
            assert (f.masked[path].state, f.masked[path].how) == ("masked", how), path
            expect.masked(c, path)
        expect.masked(c, "/proc/sys")  # a read-only bind is the engines' notion here
        expect.readonly_path(c, "/proc/sys")
    elif c.runtime == "nspawn":
        version = nspawn_version()
        if version <= 252:  # measured: systemd 252 masks none of runc's files
            assert f.masked["/proc/keys"].state == "exposed"
            with pytest.raises(expect.CheckFailed, match=r"\[nspawn\] masked: expected /proc/keys"):
                expect.masked(c, "/proc/keys")
        elif version >= 257:  # measured: systemd 257 (trixie) masks it
            assert f.masked["/proc/keys"].state == "masked"
        expect.readonly_path(c, "/proc/sys")
    elif c.runtime == "lxc":  # LXC 5's proc:mixed: /proc/sys read-only, runc's files open
        assert f.masked["/proc/keys"].state == "exposed"
        expect.readonly_path(c, "/proc/sys")
    # Whatever the runtime: a masked path passes, an exposed one fails, absent warns.
    for path, m in f.masked.items():
        if m.state == "masked":
            expect.masked(c, path)
        elif m.state == "exposed":
            with pytest.raises(expect.CheckFailed):
                expect.masked(c, path)
        elif m.state == "absent":
            with pytest.warns(expect.PathAbsentWarning, match="absent on this kernel"):
                expect.masked(c, path)


def test_privileged_podman_leaves_timer_list_exposed_and_masked_fails() -> None:
    rt = runtime_or_skip("podman")
    with rt.start(ContainerSpec(privileged=True)) as c:
        f = c.facts()
        assert independent(c.host_pid, "/proc/timer_list") == "rw"
        assert f.masked["/proc/timer_list"].state == "exposed"
        with pytest.raises(expect.CheckFailed, match="exposed"):
            expect.masked(c, "/proc/timer_list")
        with pytest.raises(expect.CheckFailed, match="/proc/sys read-only or masked"):
            expect.readonly_path(c, "/proc/sys")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # exposed is a failure, never an absent warning
            with pytest.raises(expect.CheckFailed):
                expect.masked(c, "/proc/keys")


def test_policy_check_reports_kcore_as_this_kernel_has_it(tmp_path: Path) -> None:
    """Absent on a kernel without /proc/kcore (skipped, saying so, never a pass); on one
    with it, Docker's /dev/null bind makes it masked (passed)."""
    runtime_or_skip("docker")
    policy = tmp_path / "containersec-masked.yaml"
    policy.write_text(
        "image: containersec/probe\nruntimes: [docker]\nexpect:\n"
        "  - masked: /proc/kcore\n  - masked: /proc/keys\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "pytest_containersec.cli.cli", "check", str(policy),
         "--format", "json", "--strict"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)  # the summary goes to stderr
    outcomes = {x["name"]: (x["outcome"], x["message"]) for x in data["results"]}
    assert outcomes["masked[/proc/keys]"][0] == "passed"
    kcore_outcome, kcore_message = outcomes["masked[/proc/kcore]"]
    if os.path.exists("/proc/kcore"):
        assert kcore_outcome == "passed", kcore_message
    else:
        assert kcore_outcome == "skipped"
        assert "absent on this kernel" in kcore_message
