"""Run the probe with the identity of the process under test (see :mod:`identity`).

First the engine's ordinary exec. When its credentials differ from the process's in a
part setpriv can set, the probe runs again as the container's root under setpriv with
the process's credentials, and that run's results are the snapshot's. Each run is
checked like every probe exec: the probe folder before and after, a strict parse.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ContainerSecError, ExecTimeout, ProbeError, ProbeModified
from ..linux import identity, procfs
from ..model import Mismatch
from . import probe
from .target import PROBE_BUSYBOX, ExecResult, Target

# Parts setpriv sets; a difference only elsewhere (seccomp, LSM label) is not retried.
SETTABLE = ("user.", "capabilities.", "no_new_privs")


@dataclass(frozen=True)
class Took:
    """One probe run and how the workload's identity was taken for it. A non-empty ``tampered``
    means the probe folder was modified: ``output`` is then empty and nothing in it may be used."""

    output: probe.ProbeOutput
    status: procfs.Status
    tampered: tuple[str, ...]
    method: str  # "exec" | "setpriv"
    setpriv: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()  # why parts could not be reproduced


def _exec(container: Target, argv: list[str], timeout: float, as_root: bool) -> ExecResult:
    if as_root:
        return container.root_exec(argv, timeout=timeout)
    return container.exec(argv, timeout=timeout)


def _one(
    container: Target, argv: list[str], keys: tuple[str, ...], timeout: float, as_root: bool
) -> tuple[probe.ProbeOutput | None, procfs.Status | None, tuple[str, ...], ExecResult | None]:
    """One probe run: (output, its own status, tampered problems, the raw result)."""
    runtime = container.runtime
    try:
        result = _exec(container, argv, timeout, as_root)
    except ProbeModified as exc:
        return None, None, exc.problems, None
    except ExecTimeout:  # named by what it probed, not by the script's text
        tampered = container.check_probe()
        if not tampered:
            raise ExecTimeout(runtime, ["(containersec probe)", *keys], timeout) from None
        return None, None, tampered, None
    tampered = container.check_probe()
    if tampered:
        return None, None, tampered, result
    if result.rc != 0 and as_root and f"{probe.PROTOCOL} BEGIN" not in result.stdout:
        return None, None, (), result  # setpriv refused: the caller says why
    if result.rc != 0:
        raise ProbeError(
            runtime,
            f"the probe exec failed with status {result.rc}: {result.stderr.strip()[-1000:]}",
        )
    try:
        out = probe.parse(result.stdout, keys)
        return out, procfs.parse_status(out.status_text), (), result
    except ContainerSecError as exc:  # what came back names the cause (an engine's message?)
        got = f"stdout began {result.stdout[:300]!r}, stderr ended {result.stderr[-300:]!r}"
        raise ProbeError(runtime, f"{exc}; {got}") from None


def run(
    container: Target,
    argv: list[str],
    keys: tuple[str, ...],
    target: identity.Credentials,
    timeout: float,
) -> Took:
    """The probe's output, taken with ``target``'s identity where it can be."""
    out, status, tampered, _ = _one(container, [PROBE_BUSYBOX, *argv], keys, timeout, False)
    if tampered or out is None or status is None:
        return Took(probe.ProbeOutput("", {}, {}, {}), _empty(status), tampered, "exec")
    first = identity.credentials(status, out.label)
    diffs = identity.differences(target, first)
    if not diffs:
        return Took(out, status, (), "exec")
    reasons = identity.unreproducible(target, first)
    if not any(name.startswith(SETTABLE) for name, _, _ in diffs):
        return Took(out, status, (), "exec", (), tuple(reasons))
    try:
        options = identity.setpriv_options(target)
    except ValueError as exc:
        return Took(out, status, (), "exec", (), (*reasons, f"user: {exc}"))
    if container.probe_copy is not None:
        container.probe_copy.add_tools()
    command = identity.setpriv_argv(options, [PROBE_BUSYBOX, *argv])
    try:
        out2, status2, tampered, result = _one(container, command, keys, timeout, True)
    except NotImplementedError as exc:
        why = f"the {container.runtime} exec cannot run as the container's root ({exc})"
        return Took(out, status, (), "exec", (), (*reasons, f"user: {why}"))
    if out2 is None and not tampered and _bounding_refused(result, target, first):
        # a root exec without CAP_SETPCAP cannot touch its bounding set, even to keep it:
        # when it already is the process's, go on without (the comparison below checks)
        options = [o for o in options if not o.startswith("--bounding-set=")]
        command = identity.setpriv_argv(options, [PROBE_BUSYBOX, *argv])
        out2, status2, tampered, result = _one(container, command, keys, timeout, True)
    if tampered:
        return Took(probe.ProbeOutput("", {}, {}, {}), status, tampered, "setpriv", tuple(options))
    if out2 is None or status2 is None:
        err = (result.stderr if result is not None else "").strip()[-500:]
        why = f"setpriv could not take the process's credentials as the container's root: {err}"
        return Took(out, status, (), "exec", tuple(options), (*reasons, f"user: {why}"))
    return Took(out2, status2, (), "setpriv", tuple(options), tuple(reasons))


def _bounding_refused(
    result: ExecResult | None, target: identity.Credentials, first: identity.Credentials
) -> bool:
    err = result.stderr if result is not None else ""
    return "bounding set" in err and target.bounding == first.bounding


def _empty(status: procfs.Status | None) -> procfs.Status:
    if status is not None:
        return status
    return procfs.Status((0,) * 4, (0,) * 4, (), (), (), (), (), (), "disabled", False, (1,))


def reasons(inside: list[Mismatch], known: tuple[str, ...]) -> tuple[str, ...]:
    """For each part still differing after the probe ran: why it could not be taken on
    (the known reason for that part, else what differs)."""
    out: list[str] = []
    for m in inside:
        head = m.field.split(".")[0]
        why = [r for r in known if r.split(":")[0] in (m.field, head)]
        if why:
            out += [r for r in why if r not in out]
        else:
            out.append(f"{m.field}: the process has {m.expected!r}, the probe got {m.observed!r}")
    return tuple(out)
