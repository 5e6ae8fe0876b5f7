"""The parsers on files recorded on the second test host (the trixie VM: pure cgroup v2,
systemd 257 as PID 1, AppArmor, Docker 26, Podman 5), by ``scripts/vm/vm.py record``:
one container per runtime and case, started with the engines' own CLIs (not through this
package), its /proc files and its cgroup files from the root down. Each engine puts its
cgroup elsewhere (Docker's systemd driver, Podman's ``libpod-<id>.scope/container``,
rootless under ``user@<uid>.service``, nspawn's machine scope, a unit's service cgroup):
the same reader must find the limits in each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_containersec.linux import masking, procfs
from pytest_containersec.linux.cgroups import read_limits

VM = Path(__file__).parent.parent / "data" / "vm"
RECORDED = sorted(p for p in VM.glob("*-*") if (p / "meta.json").is_file())
LIMITED = [p for p in RECORDED if p.name.endswith("-limits")]
DEFAULT = [p for p in RECORDED if p.name.endswith("-default")]


def fake_root(rec: Path, tmp: Path) -> tuple[Path, int]:
    """A root the readers can walk: the host's mountinfo, the process's cgroup file and
    the cgroup folders recorded from /sys/fs/cgroup down to the process's cgroup."""
    meta = json.loads((rec / "meta.json").read_text())
    pid = int(meta["host_pid"])
    (tmp / "proc/self").mkdir(parents=True)
    shutil.copyfile(VM / "host_mountinfo", tmp / "proc/self/mountinfo")
    (tmp / f"proc/{pid}").mkdir()
    for name in ("cgroup", "status", "uid_map", "gid_map", "mountinfo"):
        shutil.copyfile(rec / "proc" / name, tmp / f"proc/{pid}/{name}")
    cg = tmp / "sys/fs/cgroup"
    for d in sorted((rec / "cgroup").rglob("*")):
        if d.is_file():
            rel = d.relative_to(rec / "cgroup")
            dest = cg / rel if rel.parts[0] != "." else cg / Path(*rel.parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d, dest)
    return tmp, pid


def test_every_runtime_was_recorded() -> None:
    names = {p.name for p in RECORDED}
    for rt in ("docker", "podman", "podman-rootless", "docker-userns", "docker-rootless",
               "nspawn", "systemd-run"):  # fmt: skip
        assert {f"{rt}-default", f"{rt}-limits"} <= names, rt
    assert "docker-privileged" in names
    assert "podman-privileged" in names
    assert procfs.label_lsm(procfs.parse_lsm_list((VM / "lsm").read_text())) == "apparmor"


@pytest.mark.parametrize("rec", LIMITED, ids=lambda p: p.name)
def test_limits_are_found_wherever_the_engine_put_its_cgroup(rec: Path, tmp_path: Path) -> None:
    root, pid = fake_root(rec, tmp_path)
    cg = read_limits(pid, root=root)
    assert cg.version == 2
    assert cg.memory_max == 64 * 1024**2, rec.name
    assert cg.pids_max == 32, rec.name
    assert cg.cpu_max == pytest.approx(0.5), rec.name


@pytest.mark.parametrize("rec", DEFAULT, ids=lambda p: p.name)
def test_defaults_read_as_the_engines_set_them(rec: Path, tmp_path: Path) -> None:
    root, pid = fake_root(rec, tmp_path)
    cg = read_limits(pid, root=root)
    rt = rec.name.removesuffix("-default")
    assert cg.memory_max is None, rt
    assert cg.cpu_max is None, rt
    if rt.startswith("podman"):  # containers.conf's pids_limit default
        assert cg.pids_max == 2048
    elif rt == "nspawn":  # nspawn's own scope: TasksMax=16384
        assert cg.pids_max == 16384


@pytest.mark.parametrize("rec", RECORDED, ids=lambda p: p.name)
def test_apparmor_labels_as_each_engine_sets_them(rec: Path) -> None:
    label = procfs.parse_attr_current((rec / "proc/attr_current").read_text())
    rt = rec.name.rsplit("-", 1)[0]
    privileged = rec.name.endswith("-privileged")
    if rt in ("docker", "docker-userns") and not privileged:
        assert label == "docker-default (enforce)"
    elif rt == "podman" and not privileged:
        assert label is not None
        assert label.startswith("containers-default-")
        assert label.endswith(" (enforce)")
    elif rt == "docker-rootless":  # no profile transition: runc's own, unconfined mode
        assert label == "runc (unconfined)"
    elif rt == "podman-rootless" or (rt == "podman" and privileged):  # likewise crun's
        assert label == "crun (unconfined)"
    else:  # privileged Docker, nspawn, plain units
        assert label == "unconfined", rec.name


@pytest.mark.parametrize("rec", RECORDED, ids=lambda p: p.name)
def test_masked_paths_from_recorded_mountinfo(rec: Path) -> None:
    """runc and crun mask kcore, keys and timer_list (dev-null) and /proc/acpi (tmpfs);
    a privileged container and a plain unit leave them as the kernel has them."""
    mounts = procfs.parse_mountinfo((rec / "proc/mountinfo").read_text())
    got = masking.assess(mounts, exists=lambda p: True)
    rt = rec.name.rsplit("-", 1)[0]
    oci = rt in ("docker", "podman", "podman-rootless", "docker-userns", "docker-rootless")
    if oci and not rec.name.endswith("-privileged"):
        for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
            assert (got[path].state, got[path].how) == ("masked", "dev-null"), (rec.name, path)
        assert got["/proc/acpi"].state == "masked", rec.name
    elif rt == "systemd-run" or rec.name.endswith("-privileged"):
        assert got["/proc/keys"].state != "masked", rec.name
