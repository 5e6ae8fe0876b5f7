"""The probe's output parser, on outputs recorded from real containers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_containersec.errors import ProbeError, ProbeParseError, SpecError
from pytest_containersec.model import AccessResult
from pytest_containersec.observe import identity_probe, probe
from pytest_containersec.runtimes.base import ExecResult

DATA = Path(__file__).parent.parent / "data" / "probe"
KEYS = (*probe.DEFAULT_ACCESS, "/etc/passwd:w", "/bin/sh:x", "/nonexist:x")


def load(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


def test_default_docker_container_as_root() -> None:
    out = probe.parse(load("docker-default"), KEYS)
    assert out.access["/etc/shadow:r"] == AccessResult(True, None)
    assert out.access["/proc/sys/kernel/core_pattern:w"] == AccessResult(False, "EROFS")
    assert out.access["/dev/mem:r"] == AccessResult(False, "ENOENT")
    assert out.access["/nonexist:x"] == AccessResult(False, "ENOENT")
    assert out.operations["mount_tmpfs"] == AccessResult(False, "EPERM")
    assert out.operations["unshare_user"] == AccessResult(False, "EPERM")
    assert out.operations["load_module"] == AccessResult(False, "EPERM")
    assert out.operations["mknod_device"] == AccessResult(True, None)
    assert out.sockets == {}
    assert "CapBnd:" in out.status_text


def test_unprivileged_user_gets_eacces() -> None:
    out = probe.parse(load("docker-user1000-capdropall-ro"), KEYS)
    assert out.access["/etc/shadow:r"] == AccessResult(False, "EACCES")
    assert out.access["/etc/passwd:w"] == AccessResult(False, "EACCES")
    assert out.operations["mknod_device"] == AccessResult(False, "EPERM")


def test_sys_admin_unconfined_and_socket() -> None:
    out = probe.parse(load("docker-sysadmin-unconfined"), KEYS)
    assert out.operations["mount_tmpfs"].allowed
    assert out.operations["unshare_user"].allowed
    # busybox insmod exits with the errno; this kernel has no module support
    assert out.operations["load_module"] == AccessResult(False, "ENOSYS")
    assert out.operations["write_sysfs"] == AccessResult(False, "EROFS")
    assert out.sockets == {"/var/run/docker.sock": True}


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("dd: can't open '/x': Permission denied", "EACCES"),
        ("mknod: /tmp/x: Operation not permitted", "EPERM"),
        ("dd: can't open '/x': Read-only file system", "EROFS"),
        ("unshare: unshare(0x10000000): Function not implemented", "ENOSYS"),
        ("mount: permission denied (are you root?)", "EPERM"),
        ("insmod: can't insert 'x': invalid module format", "ENOEXEC"),
        ("something we never saw", None),
    ],
)
def test_errno_names(message: str, name: str | None) -> None:
    assert probe.errno_name(message) == name


def test_unknown_message_is_denied_not_allowed() -> None:
    text = load("docker-default").replace(
        "No such file or directory\nR\tA\t/dev/kmsg", "weird\nR\tA\t/dev/kmsg", 1
    )
    out = probe.parse(text, KEYS)
    assert out.access["/dev/mem:r"] == AccessResult(False, "UNKNOWN")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.replace("CSPROBE1 END\n", ""), "END trailer"),
        (lambda t: t.replace("CSPROBE1 BEGIN\n", ""), "BEGIN header"),
        (lambda t: t.replace("R\tO\tunshare_user", "R\tO\tunshare_usr"), "unexpected operation"),
        (lambda t: "\n".join(ln for ln in t.split("\n") if "mount_tmpfs" not in ln), "no result"),
        (lambda t: t.replace("R\tA\t/etc/shadow:r\t0", "R\tA\t/etc/shadow:r\tx"), "malformed"),
        (lambda t: t + "R\tA\t/etc/shadow:r\t0\t\n", "END trailer"),
        (
            lambda t: t.replace("CSPROBE1 END", "R\tA\t/etc/shadow:r\t0\t\nCSPROBE1 END"),
            "unexpected",
        ),
        (lambda t: t + "x" * probe.MAX_PROBE_OUTPUT, "exceeds"),
    ],
)
def test_malformed_output_is_rejected(mutate: object, reason: str) -> None:
    text = mutate(load("docker-default"))  # type: ignore[operator]
    with pytest.raises(ProbeParseError, match=reason):
        probe.parse(text, KEYS)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_garbage_never_parses(text: str) -> None:
    with pytest.raises(ProbeParseError):
        probe.parse(text, KEYS)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.text(max_size=20))
def test_mutated_samples_parse_or_raise(pos: int, junk: str) -> None:
    text = load("docker-default")
    pos = min(pos, len(text))
    mutated = text[:pos] + junk + text[pos:]
    try:
        out = probe.parse(mutated, KEYS)
    except ProbeParseError:
        return
    assert set(out.access) == set(KEYS)
    assert set(out.operations) == set(probe.OPERATIONS)


@pytest.mark.parametrize("key", ["relative:r", "/x:q", "/x", "/a\tb:r", "/a\nb:w", ":r"])
def test_access_keys_are_validated(key: str) -> None:
    with pytest.raises(SpecError):
        probe.argv((key,))


def test_argv_passes_paths_as_arguments_not_script_text() -> None:
    hostile = "/tmp/$(reboot);`id`:r"
    argv = probe.argv((hostile,))
    assert argv[-1] == hostile
    assert hostile not in argv[2]


def test_a_probe_output_that_does_not_parse_is_reported_with_what_came_back() -> None:
    class Garbled:
        runtime = "fake"

        def exec(self, argv: list[str], timeout: float = 30.0) -> ExecResult:
            return ExecResult(0, "tail of the output\nCSPROBE1 END\n", "shim: fifo closed\n")

        def check_probe(self) -> tuple[str, ...]:
            return ()

    with pytest.raises(ProbeError) as info:
        identity_probe._one(Garbled(), ["probe"], (), 5.0, False)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "missing the CSPROBE1 BEGIN header" in msg
    assert "stdout began 'tail of the output\\nCSPROBE1 END\\n'" in msg
    assert "shim: fifo closed" in msg
