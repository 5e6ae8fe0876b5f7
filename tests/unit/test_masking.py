"""Masked and read-only kernel paths: the mountinfo classifier on recorded and crafted
samples (tests/data/masked), the probe fold-in, the checks, expect, policy and reports."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec import expect
from pytest_containersec.checks import checks, profiles
from pytest_containersec.checks.verdict import split_absent
from pytest_containersec.linux import masking, procfs
from pytest_containersec.model import AccessResult, Facts, MaskedPath
from pytest_containersec.policy import policy
from pytest_containersec.report import report, sarif

from .factories import facts

DATA = Path(__file__).parent.parent / "data" / "masked"


def assessed(case: str) -> dict[str, MaskedPath]:
    d = DATA / case
    mounts = procfs.parse_mountinfo((d / "mountinfo").read_text())
    has = set((d / "host-has").read_text().split())
    return masking.assess(mounts, lambda p: p in has)


def states(case: str) -> dict[str, tuple[str, str]]:
    return {p: (m.state, m.how) for p, m in assessed(case).items()}


ABSENT_HERE = ("absent", "host-absent")
MASKED_NULL = ("masked", "dev-null")
MASKED_TMPFS = ("masked", "tmpfs")
RO_BIND = ("readonly", "read-only-bind")
RO_MOUNT = ("readonly", "read-only-mount")
UNCOVERED = ("exposed", "uncovered")
INACCESSIBLE = ("masked", "inaccessible")

# This machine's kernel has no /proc/kcore, /proc/sysrq-trigger, /proc/scsi, ...
RECORDED = {
    "docker-default": {
        "/proc/kcore": ABSENT_HERE,
        "/proc/keys": MASKED_NULL,
        "/proc/timer_list": MASKED_NULL,
        "/proc/acpi": MASKED_TMPFS,
        "/sys/firmware": MASKED_TMPFS,
        "/proc/interrupts": UNCOVERED,  # Docker 20.10 does not mask it
        "/sys/dev/block": RO_MOUNT,  # nor this (Podman does); /sys is read-only
        "/proc/sys": RO_BIND,
        "/proc/bus": RO_BIND,
        "/proc/sysrq-trigger": ABSENT_HERE,
    },
    "podman-default": {
        "/proc/kcore": ABSENT_HERE,
        "/proc/keys": MASKED_NULL,
        "/proc/timer_list": MASKED_NULL,
        "/sys/dev/block": MASKED_TMPFS,
        "/sys/firmware": MASKED_TMPFS,
        "/proc/sys": RO_BIND,
    },
    "podman-rootless-default": {
        "/proc/keys": MASKED_NULL,  # the host's devtmpfs /null, bound in by rootless podman
        "/proc/acpi": MASKED_TMPFS,
        "/proc/irq": RO_BIND,
    },
    "nspawn-private-users": {  # systemd 252 masks none of runc's files
        "/proc/keys": UNCOVERED,
        "/proc/timer_list": UNCOVERED,
        "/proc/acpi": RO_BIND,
        "/sys/firmware": RO_MOUNT,
        "/proc/sys": RO_BIND,
        "/proc/kcore": ABSENT_HERE,
    },
    "podman-privileged": {
        "/proc/keys": UNCOVERED,
        "/proc/timer_list": UNCOVERED,
        "/proc/acpi": UNCOVERED,
        "/sys/firmware": UNCOVERED,  # /sys itself is writable
        "/proc/sys": UNCOVERED,
        "/proc/kcore": ABSENT_HERE,
    },
    # The adapters' own containers: nspawn with a private network gets a tmpfs /sys
    # skeleton (no firmware folder at all); systemd-run's unit in the booted systemd.
    "nspawn-adapter": {
        "/sys/firmware": ("masked", "no-kernel-fs"),
        "/proc/keys": UNCOVERED,
        "/proc/timer_list": UNCOVERED,  # the probe finds it unreachable (EACCES) live
        "/sys/dev/block": RO_MOUNT,
        "/proc/acpi": RO_BIND,
        "/sys/fs/selinux": ABSENT_HERE,  # an empty mount point inside, not the kernel's
    },
    "systemd-run-adapter": {
        "/proc/keys": UNCOVERED,
        "/sys/firmware": RO_MOUNT,
        "/proc/sys": RO_BIND,
    },
    # Crafted from runc's maskPath / readonlyPath, crun and systemd 257's nspawn-mount.c
    # on a trixie-like kernel that has kcore, sysrq-trigger, scsi, powercap.
    "docker-trixie-crafted": {
        "/proc/kcore": MASKED_NULL,
        "/proc/keys": MASKED_NULL,
        "/proc/scsi": MASKED_TMPFS,
        "/sys/devices/virtual/powercap": MASKED_TMPFS,
        "/proc/sysrq-trigger": RO_BIND,
        "/proc/sys": RO_BIND,
        "/proc/interrupts": UNCOVERED,
        "/proc/asound": ABSENT_HERE,
    },
    "nspawn-trixie-crafted": {
        "/proc/kcore": INACCESSIBLE,
        "/proc/keys": INACCESSIBLE,
        "/proc/timer_list": INACCESSIBLE,
        "/proc/sysrq-trigger": INACCESSIBLE,
        "/proc/acpi": RO_BIND,
        "/proc/scsi": RO_BIND,
        "/sys/firmware": RO_MOUNT,
        "/proc/sys": RO_BIND,
    },
    "podman-rootless-trixie-crafted": {
        "/proc/kcore": MASKED_NULL,
        "/proc/sysrq-trigger": RO_BIND,
        "/sys/dev/block": MASKED_TMPFS,
        "/sys/devices/virtual/powercap": MASKED_TMPFS,
    },
}


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_recorded_and_crafted_samples(case: str) -> None:
    got = states(case)
    assert set(got) == set(masking.STANDARD_PATHS)
    for path, want in RECORDED[case].items():
        assert got[path] == want, path


def test_every_sample_directory_is_checked() -> None:
    assert {d.name for d in DATA.iterdir() if d.is_dir()} == set(RECORDED)


def test_the_deciding_mount_is_named() -> None:
    kcore = assessed("docker-trixie-crafted")["/proc/kcore"]
    assert (kcore.mount, kcore.source) == ("/proc/kcore", "tmpfs:/null")
    assert masking.describe(kcore) == "masked (dev-null: tmpfs:/null at /proc/kcore)"
    fw = assessed("nspawn-private-users")["/sys/firmware"]
    assert (fw.mount, fw.source) == ("/sys", "sysfs:/")


def test_probe_keys_are_only_the_paths_no_mount_decides() -> None:
    assert masking.probe_keys(assessed("podman-default")) == ("/proc/interrupts:r",)
    keys = masking.probe_keys(assessed("podman-privileged"))
    assert "/proc/keys:r" in keys
    assert "/proc/sys:r" in keys
    assert "/proc/kcore:r" not in keys  # absent on the host: nothing to open


def test_settle_an_open_that_fails_inside_is_unreachable() -> None:
    a = assessed("nspawn-private-users")
    access = {
        "/proc/keys:r": AccessResult(False, "EACCES"),
        "/proc/timer_list:r": AccessResult(True),
        "/proc/acpi:r": AccessResult(False, "ENOENT"),  # decided by its mount: ignored
    }
    s = masking.settle(a, access)
    assert (s["/proc/keys"].state, s["/proc/keys"].how, s["/proc/keys"].errno) == (
        "masked",
        "unreachable",
        "EACCES",
    )
    assert s["/proc/timer_list"].state == "exposed"
    assert s["/proc/acpi"] == a["/proc/acpi"]
    assert masking.describe(s["/proc/keys"]) == "masked (unreachable: open fails with EACCES)"


def _mi(text: str) -> tuple[procfs.MountInfo, ...]:
    return procfs.parse_mountinfo(text)


def test_a_new_proc_over_proc_hides_the_masks_under_it() -> None:
    mounts = _mi(
        "20 1 0:50 / /proc rw,nosuid - proc proc rw\n"
        "21 20 0:44 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw\n"
        "22 20 0:51 / /proc rw,nosuid - proc proc rw\n"
    )
    m = masking.classify(mounts, "/proc/kcore", True)
    assert (m.state, m.how, m.mount) == ("exposed", "uncovered", "/proc")


def test_stacked_masks_the_last_one_wins() -> None:
    mounts = _mi(
        "20 1 0:50 / /proc rw,nosuid - proc proc rw\n"
        "21 20 0:50 /sys /proc/sys ro,nosuid - proc proc rw\n"
        "22 21 0:52 / /proc/sys ro - tmpfs tmpfs ro\n"
    )
    assert masking.classify(mounts, "/proc/sys", True).how == "tmpfs"


def test_no_proc_mounted_or_a_tmpfs_instead_of_sysfs() -> None:
    only_root = _mi("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")
    m = masking.classify(only_root, "/proc/kcore", True)
    assert (m.state, m.how) == ("masked", "no-kernel-fs")
    assert masking.classify(only_root, "/proc/kcore", False).state == "absent"
    sys_tmpfs = _mi("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:60 / /sys rw - tmpfs tmpfs rw\n")
    assert masking.classify(sys_tmpfs, "/sys/firmware", True).how == "no-kernel-fs"


def test_a_writable_kernel_fs_bind_exactly_at_the_path_is_exposed() -> None:
    mounts = _mi(
        "20 1 0:50 / /proc rw - proc proc rw\n21 20 0:50 /sys /proc/sys rw - proc proc rw\n"
    )
    assert masking.classify(mounts, "/proc/sys", True).how == "writable-bind"


def test_another_file_system_over_the_path_masks_it_nspawn_kmsg() -> None:
    mounts = _mi(
        "20 1 0:50 / /proc rw - proc proc rw\n"
        "21 20 0:43 /.#proc-kmsg6a34//deleted /proc/keys rw,nosuid - tmpfs tmpfs rw,mode=755\n"
    )
    assert masking.classify(mounts, "/proc/keys", True).how == "other-mount"


def test_host_has_reads_the_observers_tree(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "keys").write_text("")
    assert masking.host_has("/proc/keys", str(tmp_path))
    assert not masking.host_has("/proc/kcore", str(tmp_path))


# -- Facts JSON ----------------------------------------------------------------------------


def masked_facts(
    case: str = "docker-trixie-crafted", paths: Mapping[str, MaskedPath] | None = None, **kw: Any
) -> Facts:
    return facts(masked={**assessed(case), **(paths or {})}, **kw)


def test_json_round_trip_and_older_json() -> None:
    f = masked_facts()
    assert Facts.from_json(f.to_json()) == f
    d = json.loads(f.to_json())
    assert d["masked"]["/proc/kcore"] == {
        "state": "masked",
        "how": "dev-null",
        "mount": "/proc/kcore",
        "source": "tmpfs:/null",
        "errno": None,
    }
    del d["masked"]
    assert Facts.from_json(json.dumps(d)).masked == {}


# -- checks ----------------------------------------------------------------------------------


def test_masked_passes_on_dev_null_tmpfs_inaccessible_and_unreachable() -> None:
    assert checks.masked(masked_facts(), "/proc/kcore") == []
    assert checks.masked(masked_facts(), "/proc/scsi") == []
    assert checks.masked(masked_facts("nspawn-trixie-crafted"), "/proc/keys") == []
    gone = MaskedPath("masked", "unreachable", "/proc", "proc:/", "ENOENT")
    assert checks.masked(masked_facts(paths={"/proc/interrupts": gone}), "/proc/interrupts") == []


def test_masked_fails_on_an_exposed_path() -> None:
    [v] = checks.masked(masked_facts("podman-privileged"), "/proc/timer_list")
    assert (v.check, v.absent) == ("masked", False)
    assert v.observed == "exposed (uncovered: proc:/ at /proc)"
    assert "privileged" in v.hint
    [v] = checks.masked(masked_facts("nspawn-private-users"), "/proc/keys")
    assert v.observed.startswith("exposed")


def test_masked_a_read_only_bind_is_enough_only_where_that_is_the_engines_notion() -> None:
    f = masked_facts()
    assert checks.masked(f, "/proc/sysrq-trigger") == []  # read-only bind
    assert checks.masked(f, "/proc/sys") == []
    [v] = checks.masked(masked_facts("nspawn-private-users"), "/sys/firmware")
    assert v.observed.startswith("readonly (read-only-mount")  # nspawn 252 leaves it readable


def test_an_absent_path_is_not_a_pass_and_not_a_failure() -> None:
    [v] = checks.masked(masked_facts("docker-default"), "/proc/kcore")
    assert v.absent
    assert "absent on this kernel" in v.observed
    findings, notes = split_absent([v])
    assert not findings
    assert notes == [v]


def test_readonly_path() -> None:
    f = masked_facts("podman-privileged")
    [v] = checks.readonly_path(f, "/proc/sys")
    assert v.check == "readonly_path"
    assert v.expected == "/proc/sys read-only or masked"
    assert checks.readonly_path(masked_facts(), "/proc/sys") == []
    assert checks.readonly_path(masked_facts(), "/proc/kcore") == []  # masked is stricter
    assert checks.readonly_path(masked_facts("docker-default"), "/proc/sysrq-trigger")[0].absent


def test_unknown_path_and_older_facts() -> None:
    with pytest.raises(ValueError, match="not observed"):
        checks.masked(masked_facts(), "/etc/shadow")
    [v] = checks.masked(facts(), "/proc/kcore")
    assert v.observed == "not observed (older Facts)"
    assert not v.absent


# -- expect ----------------------------------------------------------------------------------


def test_expect_masked_raises_on_exposed_and_warns_on_absent() -> None:
    with pytest.raises(expect.CheckFailed, match=r"\[docker\] masked: expected /proc/keys"):
        expect.masked(masked_facts("podman-privileged"), "/proc/keys")
    expect.masked(masked_facts(), "/proc/kcore")
    with pytest.warns(expect.PathAbsentWarning, match="absent on this kernel"):
        expect.masked(masked_facts("docker-default"), "/proc/kcore")


def test_expect_absent_skip_and_fail() -> None:
    f = masked_facts("docker-default")
    with pytest.raises(pytest.skip.Exception, match="absent on this kernel"):
        expect.masked(f, "/proc/kcore", absent="skip")
    with pytest.raises(expect.CheckFailed, match="absent on this kernel"):
        expect.readonly_path(f, "/proc/sysrq-trigger", absent="fail")
    with warnings.catch_warnings():  # an exposed path fails whatever ``absent`` says
        warnings.simplefilter("error")
        with pytest.raises(expect.CheckFailed):
            expect.masked(masked_facts("podman-privileged"), "/proc/keys", absent="skip")


# -- policy, profiles, SARIF, report ----------------------------------------------------------


def _policy(tmp_path: Path, body: str) -> policy.Policy:
    p = tmp_path / "containersec-m.yaml"
    p.write_text(f"image: containersec/probe\nexpect:\n{body}")
    return policy.load(p)


def test_policy_families(tmp_path: Path) -> None:
    pol = _policy(tmp_path, "  - masked: /proc/kcore\n  - readonly_path: /proc/sys\n")
    [m, r] = pol.expectations
    assert m.name == "masked[/proc/kcore]"
    assert r.name == "readonly_path[/proc/sys]"
    assert m.evaluate(masked_facts()) == []
    assert m.evaluate(masked_facts("docker-default"))[0].absent
    assert r.evaluate(masked_facts("podman-privileged"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("  - masked: /etc/shadow\n", "containersec-m.yaml:3: masked: must be one of /proc/acpi"),
        ("  - masked: {path: /proc/kcore}\n", "masked: must be a string"),
        ("  - readonly_path: true\n", "readonly_path: must be a string"),
    ],
)
def test_policy_family_errors(tmp_path: Path, body: str, error: str) -> None:
    with pytest.raises(Exception, match=error.replace("[", r"\[")):
        _policy(tmp_path, body)


def test_profiles_use_masked_for_kcore_and_readonly_for_sysrq() -> None:
    by_id = {c.id: c for c in profiles.BASELINE}
    kcore = by_id["PSS-B /proc Mount Type (kcore)"]
    assert (kcore.family, kcore.value) == ("masked", "/proc/kcore")
    sysrq = by_id["PSS-B /proc Mount Type"]
    assert (sysrq.family, sysrq.value) == ("readonly_path", "/proc/sysrq-trigger")
    # A masked kcore that opens as /dev/null (access allowed) passes the profile control;
    # the old ``denied`` control failed it.
    f = masked_facts(access={"/proc/kcore:r": AccessResult(True)})
    assert policy.CHECKS["masked"].evaluate(f, "/proc/kcore") == []
    assert checks.denied(f, "/proc/kcore", "r")


def test_sarif_rules_and_report_cells() -> None:
    assert {"masked", "readonly_path"} <= set(sarif.RULES)
    absent = checks.masked(masked_facts("docker-default"), "/proc/kcore")
    exposed = checks.masked(masked_facts("podman-privileged"), "/proc/keys")
    m = report.from_facts(
        "t",
        {"docker": masked_facts("docker-default")},
        [("masked[/proc/kcore]", {"docker": absent}), ("masked[/proc/keys]", {"docker": exposed})],
    )
    cells = {r.name: r.cells["docker"] for r in m.rows}
    assert (cells["masked[/proc/kcore]"].value, cells["masked[/proc/kcore]"].verdict) == (
        "absent on this kernel",
        "skip",
    )
    assert cells["masked[/proc/keys]"].verdict == "fail"
    assert cells["masked kernel paths"].value.startswith("4 masked, 5 read-only, 9 absent")
    assert "exposed: /proc/interrupts" in cells["masked kernel paths"].value


def test_report_text_for_facts_without_masked() -> None:
    assert report.masked_text(facts()) == "-"


def test_check_on_every_standard_path_never_crashes() -> None:
    for case in RECORDED:
        f = masked_facts(case)
        for p in masking.STANDARD_PATHS:
            for v in checks.masked(f, p) + checks.readonly_path(f, p):
                assert v.runtime == "docker"
                assert v.expected.startswith(p)


def test_replace_keeps_masked() -> None:
    f = masked_facts()
    assert replace(f, runtime="podman").masked == f.masked
