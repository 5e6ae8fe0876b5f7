"""The classic container-security claims, as executable tests on every runtime.

Run: `make demo` (or `pytest examples/`), which runs each test once per available runtime
and ends with the side-by-side matrix. Each test states the claim, then proves what is
really in effect from the host's /proc and one probe inside the container.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ContainerStartError
from pytest_containersec.runtimes import Runtime

ROOTLESS_ENGINES = {"podman-rootless", "docker-rootless"}


def flagged(check: Callable[..., None], *args: Any, **kwargs: Any) -> str:
    """The check must FAIL (the pitfall is detected); returns what it reported."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


def test_privileged_with_the_host_root_mounted_is_flagged(containersec_start: Any) -> None:
    """`--privileged -v /:/host`: full capabilities, no seccomp, the host's root inside."""
    try:
        c = containersec_start(privileged=True, volumes=["/:/host:ro"])
    except ContainerStartError as exc:  # e.g. Docker 20.10 on a host missing a capability
        pytest.skip(f"the engine refuses --privileged here: {exc}")
    assert "bounding set" in flagged(expect.not_privileged, c)
    assert "observed disabled" in flagged(expect.seccomp, c, "filter")
    assert "host root at /host" in flagged(expect.no_sensitive_mounts, c)


@pytest.mark.containersec(user="1000")
def test_user_flag_makes_the_process_non_root_not_the_engine(
    containersec_container: Any, containersec_runtime: Runtime
) -> None:
    """`--user 1000` drops the process to uid 1000, yet the engine itself still runs as
    root unless the engine is rootless."""
    expect.user(containersec_container, uid=1000)
    expect.non_root(containersec_container)
    expect.capabilities(containersec_container, effective=[])
    facts = containersec_container.facts()
    assert facts.engine_rootless == (containersec_runtime.name in ROOTLESS_ENGINES)


@pytest.fixture(scope="module")
def root_only_host_file() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="containersec-example-"))
    folder.chmod(0o755)  # rootless engines must reach the folder to bind the file
    secret = folder / "secret"
    secret.write_text("host secret\n")
    secret.chmod(0o600)  # owned by host root, readable by host root only
    yield secret
    secret.unlink()
    folder.rmdir()


def test_user_namespaced_root_cannot_read_a_root_only_host_file(
    containersec_start: Any, containersec_runtime: Runtime, root_only_host_file: Path
) -> None:
    """Container root holds CAP_DAC_OVERRIDE; only a user namespace keeps it out of a
    host file owned by host root (mode 0600)."""
    userns = {"podman": "0:100000:65536"}.get(containersec_runtime.name)
    c = containersec_start(volumes=[f"{root_only_host_file}:/secret:ro"], userns=userns)
    expect.capabilities(c, at_most=["ALL"])
    f = c.facts(access=("/secret:r",))
    if f.host_uid_of(0) == 0:  # no user namespace: container root IS host root
        assert "allowed" in flagged(expect.denied, c, "/secret", "r")
        assert "IS host root" in flagged(expect.root_unprivileged, c)
    else:
        expect.root_unprivileged(c)
        expect.denied(c, "/secret", "r", errno="EACCES")


@pytest.mark.containersec(cap_drop=["ALL"])
def test_cap_drop_all_leaves_no_effective_capabilities(containersec_container: Any) -> None:
    expect.capabilities(containersec_container, effective=[], absent=["ALL"])
    expect.operation_denied(containersec_container, "mknod_device")


def test_default_seccomp_profile_versus_unconfined(containersec_start: Any) -> None:
    confined = containersec_start()
    unconfined = containersec_start(seccomp="unconfined")
    expect.seccomp(confined, "filter")
    if unconfined.facts().seccomp == "filter":
        # asked for and not in effect (systemd units under nspawn's own filter): the gap
        # is reported, not hidden
        assert any(m.field == "seccomp" for m in unconfined.facts().mismatches)
        assert "observed filter" in flagged(expect.seccomp, unconfined, "disabled")
    else:
        expect.seccomp(unconfined, "disabled")
        assert "observed disabled" in flagged(expect.seccomp, unconfined, "filter")


@pytest.mark.containersec(memory="64m", pids_limit=50)
def test_memory_limits_and_rootless_engines_on_cgroup_v1(
    containersec_container: Any, containersec_runtime: Runtime
) -> None:
    """Rootless engines on cgroup v1 accept --memory and do not enforce it (and systemd
    without a delegated memory controller neither): the limit is checked where it is in
    effect, and where it is not the gap is reported."""
    facts = containersec_container.facts()
    if facts.cgroup.memory_max is None:
        why = flagged(expect.cgroup, containersec_container, memory="64m", pids=50)
        if containersec_runtime.name in ROOTLESS_ENGINES and facts.cgroup.version == 1:
            assert "ignores resource limits" in why
        assert any(m.field == "cgroup.memory_max" for m in facts.mismatches)
    else:
        assert containersec_runtime.name not in ROOTLESS_ENGINES or facts.cgroup.version == 2
        expect.cgroup(containersec_container, memory="64m", pids=50)


def test_kernel_interfaces_and_module_loading_are_denied(containersec_container: Any) -> None:
    expect.denied(containersec_container, "/proc/sysrq-trigger", "w")
    expect.denied(containersec_container, "/dev/mem", "r")
    expect.denied(containersec_container, "/proc/sys/kernel/core_pattern", "w")
    expect.operation_denied(containersec_container, "load_module")
    expect.not_privileged(containersec_container)


@pytest.mark.containersec(network="none")
def test_private_network_has_no_egress(containersec_container: Any) -> None:
    """network none (nspawn: --private-network): own namespace, loopback only, no route."""
    expect.namespaces_private(containersec_container, ["net"])
    dev = containersec_container.probe_exec(["cat", "/proc/net/dev"]).stdout
    interfaces = {line.split(":")[0].strip() for line in dev.splitlines()[2:] if ":" in line}
    assert interfaces == {"lo"}
    routes = containersec_container.probe_exec(["cat", "/proc/net/route"]).stdout.splitlines()
    assert routes[1:] == []  # the header only: no default route, nowhere to send to
