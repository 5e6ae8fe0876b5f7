"""Specs from deployment files, and the new spec fields, on real runtimes: every effect
is OBSERVED (host /proc, mountinfo, the probe), and the fixtures under tests/data/deploy
get the verdict a careful reviewer would give. Lean: one container per case, -n 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_containersec import sources
from pytest_containersec.checks import checks, profiles
from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.model import Facts
from pytest_containersec.policy.policy import Expectation
from pytest_containersec.runtimes import Container
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

DATA = Path(__file__).parent.parent / "data" / "deploy"
FIELDS = ContainerSpec(
    ulimits={"nofile": "512:1024"},
    tmpfs=["/tmp:size=8m"],
    devices=["/dev/fuse"],
)
OCI_FIELDS = FIELDS.replace(
    pid="host",
    group_add=[1234],
    sysctls={"net.ipv4.ip_unprivileged_port_start": "80"},
    unmask=True,
)
# systemd needs the group to exist (audio: gid 29 in the booted Debian rootfs)
SYSTEMD_FIELDS = ContainerSpec(
    ulimits={"nofile": "512:1024"}, group_add=["audio"], tmpfs=["/srv:size=8m"]
)
CASES = {
    "docker": OCI_FIELDS,
    "podman": OCI_FIELDS,
    "nspawn": FIELDS,
    "systemd-run": SYSTEMD_FIELDS,
}


def host_limits(pid: int) -> dict[str, tuple[str, str]]:
    """``/proc/<pid>/limits`` read from the host: name -> (soft, hard)."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        words = line[26:].split()
        out[line[:26].strip()] = (words[0], words[1])
    return out


def start(runtime: str, spec: ContainerSpec) -> Iterator[Container]:
    c = runtime_or_skip(runtime).start(spec)
    try:
        yield c
    finally:
        c.stop()


class Started:
    """One container per runtime for this module (per xdist worker), started on demand."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[Container, Facts]] = {}

    def __call__(self, runtime: str) -> tuple[Container, Facts]:
        if runtime not in self.live:
            c = runtime_or_skip(runtime).start(CASES[runtime])
            self.live[runtime] = (c, c.facts(access=("/dev/fuse:r",)))
        return self.live[runtime]


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    s = Started()
    yield s
    for c, _ in s.live.values():
        c.stop()


@pytest.mark.parametrize("runtime", ["docker", "podman", "nspawn", "systemd-run"])
def test_ulimits_seen_in_host_proc(started: Started, runtime: str) -> None:
    c, _ = started(runtime)
    assert host_limits(c.host_pid)["Max open files"] == ("512", "1024")


@pytest.mark.parametrize("runtime", ["docker", "podman", "nspawn", "systemd-run"])
def test_tmpfs_mounted_with_dockers_defaults(started: Started, runtime: str) -> None:
    _, f = started(runtime)
    target = "/srv" if runtime == "systemd-run" else "/tmp"
    mine = [m for m in f.mounts if m.mountpoint == target and m.fstype == "tmpfs"][-1]
    assert {"nosuid", "nodev", "noexec"} <= set(mine.options)
    assert not [m for m in f.mismatches if m.field.startswith("mounts.")]


@pytest.mark.parametrize("runtime", ["docker", "podman", "nspawn"])
def test_device_visible_inside(started: Started, runtime: str) -> None:
    c, f = started(runtime)
    assert f.access["/dev/fuse:r"].allowed
    r = c.probe_exec(["stat", "-c", "%t:%T", "/dev/fuse"])
    assert r.stdout.strip() == "a:e5"  # char 10:229, the host's fuse device


@pytest.mark.parametrize(
    ("runtime", "gid"), [("docker", 1234), ("podman", 1234), ("systemd-run", 29)]
)
def test_group_add_in_effect(started: Started, runtime: str, gid: int) -> None:
    _, f = started(runtime)
    assert gid in f.user.groups
    assert not [m for m in f.mismatches if m.field == "user.groups"]


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_pid_host_sysctl_unmask_on_engines(started: Started, runtime: str) -> None:
    c, f = started(runtime)
    assert f.namespaces["pid"] == "host"
    assert f.masked["/proc/keys"].state == "exposed"  # unmasked: nothing covers it
    r = c.probe_exec(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
    assert r.stdout.strip() == "80"
    assert not [m for m in f.mismatches if m.field.startswith("namespaces.")]


@pytest.mark.parametrize(
    ("runtime", "spec", "field"),
    [
        ("nspawn", ContainerSpec(group_add=[1234]), "group_add"),
        ("nspawn", ContainerSpec(pid="host"), "pid"),
        ("nspawn", ContainerSpec(unmask=True), "unmask"),
        ("podman", ContainerSpec(apparmor="unconfined"), "apparmor"),
        ("docker", ContainerSpec(userns="0:100000:65536", gidmap="0:100000:65536"), "userns"),
    ],
)
def test_unsupported_names_field_and_runtime(runtime: str, spec: ContainerSpec, field: str) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        runtime_or_skip(runtime).start(spec)
    assert (info.value.field, info.value.runtime) == (field, runtime)


# -- the deployment fixtures, with a reviewer's verdict ---------------------------------


def failed(f: Facts, profile: str) -> set[str]:
    """The profile's controls that fail on ``f``."""
    absent = {p for p, m in f.masked.items() if m.state == "absent"}  # not judged here
    return {
        c.id
        for c in profiles.PROFILES[profile]
        if c.family is not None
        and not (c.family in ("masked", "readonly_path") and c.value in absent)
        and Expectation(c.family, c.value, 0).evaluate(f)
    }


DEPLOYED = {
    "compose-web-docker": ("docker", "compose", "compose.yaml", "web"),
    "compose-web-podman": ("podman", "compose", "compose.yaml", "web"),
    "compose-cadvisor-podman": ("podman", "compose", "compose.yaml", "cadvisor"),
    "kube-api-docker": ("docker", "kube", "deployment.yaml", "api"),
    "kube-api-podman-kube": ("podman-kube", "kube", "deployment.yaml", "api"),
    "kube-metrics-podman-kube": ("podman-kube", "kube", "deployment.yaml", "metrics"),
    "kube-cronjob-docker": ("docker", "kube", "cronjob.yaml", None),
    "quadlet-podman": ("podman", "quadlet", "web.container", None),
    "unit-systemd-run": ("systemd-run", "unit", "worker.service", None),
}


@pytest.fixture(scope="module", params=list(DEPLOYED))
def deployed(request: pytest.FixtureRequest) -> Iterator[tuple[str, Container, Facts]]:
    runtime, kind, file, name = DEPLOYED[request.param]
    spec = sources.load(kind, DATA / file, name).spec
    for c in start(runtime, spec):
        yield request.param, c, c.facts()


def test_reviewer_verdict(deployed: tuple[str, Container, Facts]) -> None:
    case, c, f = deployed
    baseline, restricted = failed(f, "baseline"), failed(f, "restricted")
    if case.startswith(("compose-web", "quadlet")):
        # hardened: non-root, no capabilities, nnp, read-only, limits: restricted passes;
        # the quadlet sets no CPUQuota=, so CIS 5.11 (CPU limit) is its one finding
        cis_limits = {"CIS 5.10 / 5.28 / 5.11"} if case.startswith("quadlet") else set()
        assert (baseline, restricted) == (set(), cis_limits)
        assert host_limits(c.host_pid)["Max open files"] == ("1024", "2048")
        assert (f.cgroup.memory_max, f.cgroup.pids_max) == (64 * 2**20, 64)
    elif case == "compose-cadvisor-podman":
        # the privileged sidecar with the host's root and /var/run: baseline fails
        assert {"PSS-B Privileged / CIS 5.4", "PSS-B HostPath Volumes / CIS 5.5 5.31"} <= baseline
        assert f.access["/dev/kmsg:r"].allowed
        assert "/rootfs" in f.host_root_mounts
    elif case == "kube-api-docker":
        # the container-level securityContext overrides the pod's: root, Unconfined,
        # NET_RAW + SYS_PTRACE, escalation allowed
        assert {"PSS-B Capabilities / CIS 5.3", "PSS-B Seccomp / CIS 5.21"} <= baseline
        assert {"PSS-R Running as Non-root", "PSS-R Privilege Escalation / CIS 5.25"} <= restricted
        assert (f.user.uid, f.seccomp, f.no_new_privs) == (0, "disabled", False)
        assert {"CAP_NET_RAW", "CAP_SYS_PTRACE"} <= set(f.capabilities.effective)
        assert 2000 in f.user.groups  # fsGroup
    elif case == "kube-api-podman-kube":
        # Podman's own translation: root and the added capabilities as Kubernetes would.
        # Podman 4.3 keeps its seccomp filter despite seccompProfile Unconfined and adds
        # no fsGroup: whatever this Podman does, a difference from the manifest's meaning
        # is a spec mismatch, never silent
        assert f.user.uid == 0
        assert {"CAP_NET_RAW", "CAP_SYS_PTRACE"} <= set(f.capabilities.effective)
        spec_diff = {m.field for m in f.mismatches if m.source == "spec"}
        assert (f.seccomp == "disabled") != ("seccomp" in spec_diff)
        assert (2000 in f.user.groups) != ("user.groups" in spec_diff)
    elif case == "kube-metrics-podman-kube":
        # the restricted sidecar: every PSS-R control passes. Kubernetes has no
        # per-container pids limit: CIS 5.28's finding unless the engine sets one of its own
        # (Podman 5 on cgroup v2 gives kube play containers 2048; Podman 4.3 on v1 none)
        assert (f.cgroup.memory_max, f.cgroup.cpu_max) == (32 * 2**20, 0.1)
        assert restricted == (set() if f.cgroup.pids_max else {"CIS 5.10 / 5.28 / 5.11"})
        assert (f.user.uid, f.no_new_privs, f.rootfs_read_only) == (10001, True, True)
    elif case == "kube-cronjob-docker":
        # host network (and so host UTS), DAC_READ_SEARCH, no seccomp profile = Unconfined
        assert {"PSS-B Host Namespaces / CIS 5.9 5.15 5.16", "PSS-B Capabilities / CIS 5.3",
                "PSS-B Seccomp / CIS 5.21", "CIS 5.20"} <= baseline  # fmt: skip
        assert (f.namespaces["net"], f.namespaces["uts"], f.seccomp) == ("host", "host", "disabled")
    elif case == "unit-systemd-run":
        # the sandboxed unit: dynamic non-root user, empty bounding set, nnp, a filter
        assert checks.non_root(f) == []
        assert f.capabilities.bounding == ()
        assert (f.no_new_privs, f.seccomp, f.rootfs_read_only) == (True, "filter", True)
        assert host_limits(c.host_pid)["Max open files"] == ("1024", "2048")
    else:
        raise AssertionError(case)


# -- the CLI on bad deployment files: exit 2 with file and line, nothing pulled or left --


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_containersec.cli.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "CI": os.environ.get("CI", "")},
    )  # fmt: skip


def test_cli_bad_files_exit_2_naming_file_and_line(tmp_path: Path) -> None:
    runtime_or_skip("docker")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: containersec/not-built-here\n  bad:\n    image: [x\n"
    )
    r = cli("facts", "--compose", "compose.yaml", "--service", "web", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "compose.yaml:6: yaml:" in r.stderr  # the file does not parse: no container at all
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: containersec/not-built-here\n"
    )
    r = cli("facts", "--compose", "compose.yaml", "--service", "web", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"{tmp_path / 'compose.yaml'}:3: image:" in r.stderr
    assert "never pulls" in r.stderr
    pulled = subprocess.run(
        ["docker", "image", "ls", "-q", "containersec/not-built-here"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert pulled == ""  # nothing was pulled: the image lookup fails before any create
    r = cli("compare", "--runtime", "docker", "--kube", str(DATA / "deployment.yaml"),
            "--container", "nope", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2
    assert "no container 'nope'" in r.stderr


def test_podman_kube_refuses_other_specs_and_leaves_nothing() -> None:
    rt = runtime_or_skip("podman-kube")
    with pytest.raises(UnsupportedSpec) as info:
        rt.start(ContainerSpec())
    assert info.value.runtime == "podman-kube"
    spec = sources.load("kube", DATA / "deployment.yaml", "metrics").spec
    with pytest.raises(UnsupportedSpec) as info:
        rt.start(spec.replace(read_only=False))  # a marker changing the manifest
    assert info.value.field == "read_only"
    from pytest_containersec.linux import session

    label = f"label={session.LABEL_SESSION}={session.current().id}"
    pods = subprocess.run(["podman", "pod", "ps", "-q", "--filter", label],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert pods.split() == []
