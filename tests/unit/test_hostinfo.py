"""hostinfo.lsm: the host's labelling LSM, as each host exposes it."""

from __future__ import annotations

from pathlib import Path

from pytest_containersec import hostinfo


def put(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_securityfs_list_names_the_major_lsm(tmp_path: Path) -> None:
    # the trixie VM's list: the minor LSMs come first
    put(tmp_path, "sys/kernel/security/lsm", "lockdown,capability,landlock,yama,apparmor,bpf\n")
    assert hostinfo.lsm(tmp_path) == "apparmor"
    put(tmp_path, "sys/kernel/security/lsm", "lockdown,capability,yama,selinux,bpf")
    assert hostinfo.lsm(tmp_path) == "selinux"
    put(tmp_path, "sys/kernel/security/lsm", "capability,yama")
    assert hostinfo.lsm(tmp_path) == "none"


def test_without_securityfs_the_modules_own_files_decide(tmp_path: Path) -> None:
    assert hostinfo.lsm(tmp_path) == "none"  # this machine: neither exists
    put(tmp_path, "sys/module/apparmor/parameters/enabled", "N\n")
    assert hostinfo.lsm(tmp_path) == "none"
    put(tmp_path, "sys/module/apparmor/parameters/enabled", "Y\n")
    assert hostinfo.lsm(tmp_path) == "apparmor"
    other = tmp_path / "other"
    put(other, "sys/fs/selinux/enforce", "1")
    assert hostinfo.lsm(other) == "selinux"
