"""Assertions on what is in effect. Each takes a Container (its cached snapshot is used,
taken on first use) or a Facts, and raises AssertionError naming runtime, expected,
observed and a hint. Thin wrappers over :mod:`pytest_containersec.checks`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Union

from . import checks
from .checks import Violation
from .model import Facts, MapEntry
from .verdict import split_absent

if TYPE_CHECKING:
    from .runtimes.base import Container

Target = Union["Container", Facts]


def facts_of(target: Target, access: tuple[str, ...] = ()) -> Facts:
    if isinstance(target, Facts):
        return target
    return target.facts(access=access)


class CheckFailed(AssertionError):
    """An expectation did not hold; ``violations`` carries runtime, check, expected,
    observed and hint of each finding (reports and SARIF read them)."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("\n".join(str(v) for v in violations))


class PathAbsentWarning(UserWarning):
    """A masked-path expectation could not be judged: the host kernel lacks the path."""


AbsentPolicy = Literal["warn", "skip", "fail"]


def _raise(violations: list[Violation], absent: AbsentPolicy = "fail") -> None:
    __tracebackhide__ = True
    findings, notes = split_absent(violations)
    if findings or (notes and absent == "fail"):
        raise CheckFailed(findings + notes if absent == "fail" else findings)
    if notes and absent == "skip":
        import pytest

        pytest.skip("; ".join(str(v) for v in notes))
    for v in notes:
        warnings.warn(PathAbsentWarning(str(v)), stacklevel=3)


def root_unprivileged(target: Target) -> None:
    """Container uid 0 is not host uid 0."""
    __tracebackhide__ = True
    _raise(checks.root_unprivileged(facts_of(target)))


def uid_map(target: Target, expected: Iterable[MapEntry]) -> None:
    """The uid_map is exactly ``expected`` (``[(inside, outside, count), ...]``)."""
    __tracebackhide__ = True
    _raise(checks.uid_map(facts_of(target), expected))


def user(target: Target, uid: int | None = None, gid: int | None = None) -> None:
    """The main process runs as this uid/gid (as the container sees them)."""
    __tracebackhide__ = True
    _raise(checks.user(facts_of(target), uid, gid))


def denied(target: Target, path: str, mode: str = "r", errno: str | None = None) -> None:
    """Opening ``path`` for ``mode`` (r, w, x) fails for the container's user; with
    ``errno`` ("EACCES", "EPERM", "EROFS", "ENOSYS", ...) it fails with exactly that."""
    __tracebackhide__ = True
    _raise(checks.denied(facts_of(target, (f"{path}:{mode}",)), path, mode, errno))


def allowed(target: Target, path: str, mode: str = "r") -> None:
    """Opening ``path`` for ``mode`` succeeds for the container's user."""
    __tracebackhide__ = True
    _raise(checks.allowed(facts_of(target, (f"{path}:{mode}",)), path, mode))


def operation_denied(target: Target, name: str) -> None:
    """An escape-surface operation fails: mount_tmpfs, mknod_device, unshare_user,
    load_module or write_sysfs."""
    __tracebackhide__ = True
    _raise(checks.operation_denied(facts_of(target), name))


def capabilities(
    target: Target,
    effective: Iterable[str] | None = None,
    at_most: Iterable[str] | None = None,
    absent: Iterable[str] | None = None,
    bounding: Iterable[str] | None = None,
    ambient: Iterable[str] | None = None,
) -> None:
    """``effective``: exactly this set; ``at_most``: a subset of it; ``absent``: in no
    capability set at all (not even the bounding set); ``bounding``, ``ambient``: exactly
    this bounding / ambient set. Names with or without CAP_."""
    __tracebackhide__ = True
    _raise(checks.capabilities(facts_of(target), effective, at_most, absent, bounding, ambient))


def seccomp(target: Target, mode: str) -> None:
    """Seccomp mode of the main process: "disabled", "strict" or "filter"."""
    __tracebackhide__ = True
    _raise(checks.seccomp(facts_of(target), mode))


def no_new_privs(target: Target, expected: bool = True) -> None:
    __tracebackhide__ = True
    _raise(checks.no_new_privs(facts_of(target), expected))


def lsm(target: Target, label: str | None = None, confined: bool = True) -> None:
    """An AppArmor/SELinux label confines the process (and equals ``label`` if given)."""
    __tracebackhide__ = True
    _raise(checks.lsm(facts_of(target), label, confined))


def cgroup(
    target: Target,
    memory: str | int | None = None,
    pids: int | None = None,
    cpus: float | None = None,
) -> None:
    """Each limit given is in effect (read from the host's cgroup files, parents
    included) and no looser than asked: memory as "64m" or bytes, pids, cpus in cores."""
    __tracebackhide__ = True
    _raise(checks.cgroup(facts_of(target), memory, pids, cpus))


def read_only_rootfs(target: Target) -> None:
    __tracebackhide__ = True
    _raise(checks.read_only_rootfs(facts_of(target)))


def not_privileged(target: Target) -> None:
    """No sign of privileged mode: full capabilities, seccomp off, writable /sys or
    /proc/sys, host devices."""
    __tracebackhide__ = True
    _raise(checks.not_privileged(facts_of(target)))


def no_sensitive_mounts(target: Target) -> None:
    """No host root, engine API socket (docker.sock, podman.sock, ...) or sensitive host
    folder is mounted into the container."""
    __tracebackhide__ = True
    _raise(checks.no_sensitive_mounts(facts_of(target)))


def no_mismatches(target: Target) -> None:
    """What the engine declares equals what is observed, and the container's own view
    agrees with the host's."""
    __tracebackhide__ = True
    _raise(checks.no_mismatches(facts_of(target)))


def namespaces_private(target: Target, names: Iterable[str] = ("net", "pid", "ipc", "uts")) -> None:
    """These namespaces are the container's own, not the host's."""
    __tracebackhide__ = True
    _raise(checks.namespaces_private(facts_of(target), tuple(names)))


def non_root(target: Target) -> None:
    """The main process does not run as uid 0 (as the container sees it)."""
    __tracebackhide__ = True
    _raise(checks.non_root(facts_of(target)))


def masked(target: Target, path: str, absent: AbsentPolicy = "warn") -> None:
    """``path`` is masked as the engines mean it: ``/dev/null`` or an empty tmpfs mounted
    over it, an inaccessible node, or the workload cannot open it (a masked
    ``/proc/kcore`` opens as ``/dev/null`` and passes). For /proc/sys, /proc/sysrq-trigger,
    /proc/bus, /proc/fs, /proc/irq and /proc/asound, whose engine notion is read-only, a
    read-only bind passes too. ``path`` is one of ``masking.STANDARD_PATHS``.

    ``absent``: what to do when the host kernel has no such path (nothing to mask, so
    nothing is proven): ``"warn"`` (a ``PathAbsentWarning``, the test goes on),
    ``"skip"`` (the test is skipped with that reason) or ``"fail"``."""
    __tracebackhide__ = True
    _raise(checks.masked(facts_of(target), path), absent)


def readonly_path(target: Target, path: str, absent: AbsentPolicy = "warn") -> None:
    """``path`` (one of ``masking.STANDARD_PATHS``) cannot be written from inside: it is
    read-only or masked. ``absent`` as for :func:`masked`."""
    __tracebackhide__ = True
    _raise(checks.readonly_path(facts_of(target), path), absent)


def operation_allowed(target: Target, name: str) -> None:
    """An escape-surface operation succeeds as the workload (mount_tmpfs, mknod_device,
    unshare_user, load_module or write_sysfs): for workloads that need one."""
    __tracebackhide__ = True
    _raise(checks.operation_allowed(facts_of(target), name))


def groups(target: Target, expected: Iterable[int]) -> None:
    """The process's supplementary groups are exactly these gids (as the container sees
    them)."""
    __tracebackhide__ = True
    _raise(checks.groups(facts_of(target), expected))


def namespaces_host(target: Target, names: Iterable[str]) -> None:
    """These namespaces are the host's (what ``pid="host"``/``network="host"`` asks for)."""
    __tracebackhide__ = True
    _raise(checks.namespaces_host(facts_of(target), tuple(names)))


def no_setuid_binaries(target: Target, allow: Iterable[str] = ()) -> None:
    """No setuid/setgid file in the container's file systems (read from the host, never
    run), except ``allow`` (paths or fnmatch patterns). Files on nosuid mounts do not
    count; a walk that did not finish gives no pass."""
    __tracebackhide__ = True
    _raise(checks.no_setuid_binaries(facts_of(target), allow))


def no_file_capabilities(
    target: Target, allow: Iterable[str] | Mapping[str, Iterable[str]] = ()
) -> None:
    """No file with capabilities (the security.capability xattr), except ``allow``: paths
    or fnmatch patterns, or ``{path: [caps it may carry]}``."""
    __tracebackhide__ = True
    _raise(checks.no_file_capabilities(facts_of(target), allow))
