"""Assertions on what is in effect. Each takes a Container (its cached snapshot is used,
taken on first use) or a Facts, and raises AssertionError naming runtime, expected,
observed and a hint. One function per check of the check registry (same name, same
parameters; a unit test keeps them so), each running that check through :func:`_check`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union

from .checks import checks, score
from .checks.check_params import (
    AccessMode,
    AccessPath,
    Allow,
    CapNames,
    Errno,
    ExposureLimit,
    Gids,
    KernelPath,
    Namespaces,
    Operation,
    PathPatterns,
    SeccompMode,
    Size,
    UidMap,
)
from .checks.check_registry import get
from .checks.checks import Violation
from .checks.facts_read import describe, fields_read
from .checks.facts_read import lines as read_lines
from .checks.verdict import split_absent
from .model import Facts

if TYPE_CHECKING:
    from .runtimes.base import Container

Target = Union["Container", Facts]


def facts_of(target: Target, access: tuple[str, ...] = ()) -> Facts:
    """The Facts of ``target`` (a Container's snapshot, with ``access`` probed too)."""
    if isinstance(target, Facts):
        return target
    return target.facts(access=access)


class CheckFailed(AssertionError):
    """An expectation did not hold; ``violations`` carries runtime, check, expected,
    observed and hint of each finding (reports and SARIF read them); ``facts_read`` the
    Facts fields the check read, as (path, value in short) pairs, shown after them."""

    def __init__(
        self, violations: list[Violation], facts_read: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.violations = violations
        self.facts_read = list(facts_read)
        text = [str(v) for v in violations] + read_lines(self.facts_read)
        super().__init__("\n".join(text))


class PathAbsentWarning(UserWarning):
    """A masked-path expectation could not be judged: the host kernel lacks the path."""


AbsentPolicy = Literal["warn", "skip", "fail"]


def _raise(
    violations: list[Violation],
    absent: AbsentPolicy = "fail",
    read: Callable[[], list[tuple[str, str]]] | None = None,
) -> None:
    __tracebackhide__ = True
    findings, notes = split_absent(violations)
    if findings or (notes and absent == "fail"):
        raise CheckFailed(findings + notes if absent == "fail" else findings,
                          read() if read is not None else ())  # fmt: skip
    if notes and absent == "skip":
        import pytest

        pytest.skip("; ".join(str(v) for v in notes))
    for v in notes:
        warnings.warn(PathAbsentWarning(str(v)), stacklevel=3)


def _check(
    name: str, target: Target, args: dict[str, Any] | None = None, absent: AbsentPolicy = "fail"
) -> None:
    """Run the registered check ``name`` with ``args`` on ``target`` (probing the access it
    reads) and raise its violations."""
    __tracebackhide__ = True
    spec = get(name)
    args = args or {}
    key = spec.access_key(args)
    facts = facts_of(target, (key,) if key else ())
    call_args = args

    def read() -> list[tuple[str, str]]:  # only once the check has failed
        return describe(facts, fields_read(spec.function, facts, call_args))

    _raise(spec.function(facts, **args), absent, read)


def root_unprivileged(target: Target) -> None:
    """Container uid 0 is not host uid 0."""
    __tracebackhide__ = True
    _check("root_unprivileged", target)


def uid_map(target: Target, expected: UidMap) -> None:
    """The uid_map is exactly ``expected`` (``[(inside, outside, count), ...]``)."""
    __tracebackhide__ = True
    _check("uid_map", target, {"expected": expected})


def user(target: Target, uid: int | None = None, gid: int | None = None) -> None:
    """The main process runs as this uid/gid (as the container sees them)."""
    __tracebackhide__ = True
    _check("user", target, {"uid": uid, "gid": gid})


def denied(
    target: Target, path: AccessPath, mode: AccessMode = "r", errno: Errno | None = None
) -> None:
    """Opening ``path`` for ``mode`` (r, w, x) fails for the container's user; with
    ``errno`` ("EACCES", "EPERM", "EROFS", "ENOSYS", ...) it fails with exactly that."""
    __tracebackhide__ = True
    _check("denied", target, {"path": path, "mode": mode, "errno": errno})


def allowed(target: Target, path: AccessPath, mode: AccessMode = "r") -> None:
    """Opening ``path`` for ``mode`` succeeds for the container's user."""
    __tracebackhide__ = True
    _check("allowed", target, {"path": path, "mode": mode})


def operation_denied(target: Target, name: Operation) -> None:
    """An escape-surface operation fails: mount_tmpfs, mknod_device, unshare_user,
    load_module or write_sysfs."""
    __tracebackhide__ = True
    _check("operation_denied", target, {"name": name})


def capabilities(
    target: Target,
    effective: CapNames | None = None,
    at_most: CapNames | None = None,
    absent: CapNames | None = None,
    bounding: CapNames | None = None,
    ambient: CapNames | None = None,
) -> None:
    """``effective``: exactly this set; ``at_most``: a subset of it; ``absent``: in no
    capability set at all (not even the bounding set); ``bounding``, ``ambient``: exactly
    this bounding / ambient set. Names with or without CAP_."""
    __tracebackhide__ = True
    sets = {"effective": effective, "at_most": at_most, "absent": absent}
    _check("capabilities", target, {**sets, "bounding": bounding, "ambient": ambient})


def seccomp(target: Target, mode: SeccompMode) -> None:
    """Seccomp mode of the main process: "disabled", "strict" or "filter"."""
    __tracebackhide__ = True
    _check("seccomp", target, {"mode": mode})


def no_new_privs(target: Target, expected: bool = True) -> None:
    """no_new_privs of the main process is ``expected`` (set, by default)."""
    __tracebackhide__ = True
    _check("no_new_privs", target, {"expected": expected})


def lsm(target: Target, label: str | None = None, confined: bool = True) -> None:
    """An AppArmor/SELinux label confines the process (and equals ``label`` if given)."""
    __tracebackhide__ = True
    _check("lsm", target, {"label": label, "confined": confined})


def cgroup(
    target: Target,
    memory: Size | None = None,
    pids: int | None = None,
    cpus: float | None = None,
) -> None:
    """Each limit given is in effect (read from the host's cgroup files, parents
    included) and no looser than asked: memory as "64m" or bytes, pids, cpus in cores."""
    __tracebackhide__ = True
    _check("cgroup", target, {"memory": memory, "pids": pids, "cpus": cpus})


def read_only_rootfs(target: Target) -> None:
    """The root file system is mounted read-only."""
    __tracebackhide__ = True
    _check("read_only_rootfs", target)


def not_privileged(target: Target) -> None:
    """No sign of privileged mode: full capabilities, seccomp off, writable /sys or
    /proc/sys, host devices."""
    __tracebackhide__ = True
    _check("not_privileged", target)


def no_sensitive_mounts(target: Target) -> None:
    """No host root, engine API socket (docker.sock, podman.sock, ...) or sensitive host
    folder is mounted into the container."""
    __tracebackhide__ = True
    _check("no_sensitive_mounts", target)


def no_mismatches(target: Target) -> None:
    """What the engine declares equals what is observed, and the container's own view
    agrees with the host's."""
    __tracebackhide__ = True
    _check("no_mismatches", target)


def namespaces_private(target: Target, names: Namespaces = ("net", "pid", "ipc", "uts")) -> None:
    """These namespaces are the container's own, not the host's."""
    __tracebackhide__ = True
    _check("namespaces_private", target, {"names": tuple(names)})


def non_root(target: Target) -> None:
    """The main process does not run as uid 0 (as the container sees it)."""
    __tracebackhide__ = True
    _check("non_root", target)


def limits_set(
    target: Target, memory: bool = False, pids: bool = False, cpus: bool = False
) -> None:
    """Some memory / pids / CPU limit (any value) is in effect for each one asked."""
    __tracebackhide__ = True
    _check("limits_set", target, {"memory": memory, "pids": pids, "cpus": cpus})


def lsm_not_unconfined(target: Target) -> None:
    """Where an LSM is active on the host, the process is not unconfined under it."""
    __tracebackhide__ = True
    _check("lsm_not_unconfined", target)


def masked(target: Target, path: KernelPath, absent: AbsentPolicy = "warn") -> None:
    """``path`` is masked as the engines mean it: ``/dev/null`` or an empty tmpfs mounted
    over it, an inaccessible node, or the workload cannot open it (a masked
    ``/proc/kcore`` opens as ``/dev/null`` and passes). For /proc/sys, /proc/sysrq-trigger,
    /proc/bus, /proc/fs, /proc/irq and /proc/asound, whose engine notion is read-only, a
    read-only bind passes too. ``path`` is one of ``masking.STANDARD_PATHS``.

    ``absent``: what to do when the host kernel has no such path (nothing to mask, so
    nothing is proven): ``"warn"`` (a ``PathAbsentWarning``, the test goes on),
    ``"skip"`` (the test is skipped with that reason) or ``"fail"``."""
    __tracebackhide__ = True
    _check("masked", target, {"path": path}, absent=absent)


def readonly_path(target: Target, path: KernelPath, absent: AbsentPolicy = "warn") -> None:
    """``path`` (one of ``masking.STANDARD_PATHS``) cannot be written from inside: it is
    read-only or masked. ``absent`` as for :func:`masked`."""
    __tracebackhide__ = True
    _check("readonly_path", target, {"path": path}, absent=absent)


def operation_allowed(target: Target, name: Operation) -> None:
    """An escape-surface operation succeeds as the workload (mount_tmpfs, mknod_device,
    unshare_user, load_module or write_sysfs): for workloads that need one."""
    __tracebackhide__ = True
    _check("operation_allowed", target, {"name": name})


def groups(target: Target, expected: Gids) -> None:
    """The process's supplementary groups are exactly these gids (as the container sees
    them)."""
    __tracebackhide__ = True
    _check("groups", target, {"expected": expected})


def namespaces_host(target: Target, names: Namespaces) -> None:
    """These namespaces are the host's (what ``pid="host"``/``network="host"`` asks for)."""
    __tracebackhide__ = True
    _check("namespaces_host", target, {"names": tuple(names)})


def no_setuid_binaries(target: Target, allow: PathPatterns = ()) -> None:
    """No setuid/setgid file in the container's file systems (read from the host, never
    run), except ``allow`` (paths or fnmatch patterns). Files on nosuid mounts do not
    count; a walk that did not finish gives no pass."""
    __tracebackhide__ = True
    _check("no_setuid_binaries", target, {"allow": allow})


def no_file_capabilities(target: Target, allow: Allow = ()) -> None:
    """No file with capabilities (the security.capability xattr), except ``allow``: paths
    or fnmatch patterns, or ``{path: [caps it may carry]}``."""
    __tracebackhide__ = True
    _check("no_file_capabilities", target, {"allow": allow})


def max_exposure(target: Target, limit: ExposureLimit) -> None:
    """The exposure score (0.0 fully confined .. 10.0 host-equivalent) is at most
    ``limit``."""
    __tracebackhide__ = True
    _check("max_exposure", target, {"limit": limit})


# The modules that declare the checks (imported so that the registry is complete).
_DECLARING = (checks, score)
