"""Facts of a sandboxed container (gVisor's ``runsc``): which side each field comes from.

Under gVisor the container's processes run on the Sentry, a user-space kernel. The host's
``/proc/<pid>`` of the container (Docker's ``State.Pid``) is the Sentry process itself: it
runs as ``nobody`` in a user namespace with a handful of capabilities, no_new_privs and a
seccomp filter of gVisor's own. None of that is the workload's. So:

- identity, capabilities, seccomp, no_new_privs, id maps, mounts, masked paths and
  namespaces come from the probe's own ``/proc/self`` inside the sandbox, which the Sentry
  emulates (``inside(gvisor)``). The workload cannot forge these answers (they come from
  the Sentry), but they are the sandbox kernel's notion: e.g. Seccomp is what gVisor
  applies to the workload, not the host kernel's filter on the Sentry;
- memory, pids and CPU limits come from the host's cgroup of the sandbox
  (``host(sandbox)``): the Sentry and its gofer are in it, so the limits bound the
  workload too; so does the LSM label the host put on the Sentry;
- the host path behind a mount inside is the engine's declared bind for that mount
  point (``declared+inside``): gVisor's device numbers are its own and never match the
  host's, so the usual device comparison cannot be made;
- what cannot be verified from the host: the Sentry's ``/proc/<pid>/root`` is not the
  workload's root, so the probe folder is checked on the host only (a workload root
  enough to mount over ``/.containersec`` inside its sandbox could feed its own Facts);
  there is no host uid of the workload (the Sentry serves its syscalls), so ``host_uid``
  is the id through gVisor's emulated map: the uid files on host binds are written with.

Nothing read from the Sentry is ever shown as the workload's (tested).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ContainerSecError, ExecTimeout, ProbeError, ProbeModified, ProbeParseError
from ..linux import cgroups, masking, procfs
from ..model import (
    SOURCE_DECLARED_INSIDE,
    SOURCE_HOST_SANDBOX,
    SOURCE_INSIDE_GVISOR,
    Declared,
    Facts,
    Lsm,
    Mount,
)
from . import facts, probe

if TYPE_CHECKING:
    from .target import Target

GVISOR_SOURCES: dict[str, str] = {
    "host_pid": SOURCE_HOST_SANDBOX,  # the Sentry's pid, not the workload's
    "user": SOURCE_INSIDE_GVISOR,
    "uid_map": SOURCE_INSIDE_GVISOR,
    "gid_map": SOURCE_INSIDE_GVISOR,
    "capabilities": SOURCE_INSIDE_GVISOR,
    "seccomp": SOURCE_INSIDE_GVISOR,
    "no_new_privs": SOURCE_INSIDE_GVISOR,
    "lsm": SOURCE_HOST_SANDBOX,
    "cgroup": SOURCE_HOST_SANDBOX,
    "rootfs_read_only": SOURCE_INSIDE_GVISOR,
    "mounts": SOURCE_INSIDE_GVISOR,
    "namespaces": SOURCE_INSIDE_GVISOR,
    "masked": SOURCE_INSIDE_GVISOR,
    "access": SOURCE_INSIDE_GVISOR,
    "operations": SOURCE_INSIDE_GVISOR,
    "engine_sockets": SOURCE_INSIDE_GVISOR,
    "host_root_mounts": SOURCE_DECLARED_INSIDE,
}

# One exec besides the probe's: the id maps, mountinfo and namespace links as the
# Sentry shows them to the workload. Fixed text, no input in it.
VIEW_SCRIPT = r"""
B=/.containersec/busybox
echo CSVIEW1 BEGIN
echo U; "$B" cat /proc/self/uid_map
echo G; "$B" cat /proc/self/gid_map
echo M; "$B" cat /proc/self/mountinfo
echo N; for n in cgroup ipc mnt net pid user uts; do
  l=$("$B" readlink "/proc/self/ns/$n" 2>/dev/null) && echo "$n $l"
done
echo P; "$B" setpriv -d 2>&1 | "$B" grep -E '^(no_new_privs|Ambient capabilities|setpriv): '
echo CSVIEW1 END
"""
MAX_VIEW = 256 * 1024
# gVisor prints an empty optional-fields list as one more space before the separator
# ("... / / rw  - 9p none rw,..."), which the strict kernel-format parser refuses.
_GVISOR_SEPARATOR = re.compile(r"^((?:\S+ ){6}) +- ", re.MULTILINE)
_SECTIONS = ("U", "G", "M", "N", "P")
_NS_LINE = re.compile(r"^(cgroup|ipc|mnt|net|pid|user|uts) ([a-z_]+:\[\d+\])$")


@dataclass(frozen=True)
class View:
    """The probe's own view from inside the sandbox (one exec): its id maps, mountinfo,
    namespace links and prctl state, as text to parse."""

    uid_map: str
    gid_map: str
    mountinfo: str
    links: dict[str, str]  # namespace -> the link /proc/self/ns shows
    prctl: tuple[str, ...]  # setpriv -d lines: no_new_privs, ambient capabilities


def parse_view(text: str) -> View:
    """The view exec's output, strictly."""
    src = "sandbox view"
    if len(text) > MAX_VIEW:
        raise ProbeParseError(src, f"{len(text)} bytes exceeds the {MAX_VIEW} limit")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2 or lines[0] != "CSVIEW1 BEGIN" or lines[-1] != "CSVIEW1 END":
        raise ProbeParseError(src, "missing the CSVIEW1 header or trailer")
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:-1]:
        if line in _SECTIONS and line not in parts:
            current = parts[line] = []
        elif current is None:
            raise ProbeParseError(src, f"text before the first section: {line[:80]!r}")
        else:
            current.append(line)
    if set(parts) != set(_SECTIONS):
        raise ProbeParseError(src, f"sections {sorted(parts)}, expected {sorted(_SECTIONS)}")
    links: dict[str, str] = {}
    for line in parts["N"]:
        m = _NS_LINE.match(line)
        if m is None:
            raise ProbeParseError(src, f"malformed namespace line {line[:80]!r}")
        links[m.group(1)] = m.group(2)
    mountinfo = _GVISOR_SEPARATOR.sub(r"\1- ", "\n".join(parts["M"]) + "\n")
    return View("\n".join(parts["U"]) + "\n", "\n".join(parts["G"]) + "\n", mountinfo, links,
                tuple(parts["P"]))  # fmt: skip


def complete_status(status: str, prctl: tuple[str, ...]) -> str:
    """gVisor's emulated /proc/self/status (2022) has no NoNewPrivs, CapAmb or NSpid line.
    The first two come from prctl as the workload (busybox ``setpriv -d``): gVisor answers
    PR_GET_NO_NEW_PRIVS, and refuses PR_CAP_AMBIENT (EINVAL): it has no ambient
    capabilities at all. NSpid is the emulated Pid. Anything else missing stays an error."""
    have = {line.split(":", 1)[0] for line in status.splitlines()}
    extra: list[str] = []
    if "NoNewPrivs" not in have:
        nnp = [line.split(": ", 1)[1] for line in prctl if line.startswith("no_new_privs: ")]
        if len(nnp) != 1 or nnp[0] not in ("0", "1"):
            raise ProbeParseError("sandbox view", f"no no_new_privs from prctl: {prctl!r}")
        extra.append(f"NoNewPrivs:\t{nnp[0]}")
    if "CapAmb" not in have:
        amb = [line for line in prctl if line.startswith(("Ambient capabilities: ", "setpriv: "))]
        unsupported = any("CAP_AMBIENT_IS_SET: Invalid argument" in line for line in amb)
        if not (unsupported or "Ambient capabilities: [none]" in amb):
            raise ProbeParseError("sandbox view", f"ambient capabilities unknown: {prctl!r}")
        extra.append("CapAmb:\t0000000000000000")
    if "NSpid" not in have:
        pid = [line.split(":", 1)[1].strip() for line in status.splitlines()
               if line.startswith("Pid:")]  # fmt: skip
        if pid:
            extra.append(f"NSpid:\t{pid[0]}")
    return status + "".join(line + "\n" for line in extra)


def namespaces(inside: dict[str, str], ours: dict[str, str]) -> dict[str, str]:
    """A namespace the workload shows with the host's very link is ``host``; any other it
    shows is ``private``; one it does not show (gVisor has no ipc/mnt/uts/cgroup links)
    is left out: not observed, so a check on it fails as such rather than passing."""
    return {n: "host" if ours.get(n) == link else "private" for n, link in inside.items()}


def _our_namespaces(proc: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in facts.NAMESPACES:
        try:
            out[n] = os.readlink(proc / "self" / "ns" / n)
        except OSError:
            continue
    return out


def declared_host_paths(mounts: tuple[Mount, ...], declared: Declared,
                        volumes: tuple[object, ...]) -> tuple[Mount, ...]:  # fmt: skip
    """Each mount seen inside whose mount point the engine declared as a bind gets that
    bind's host path (``binds`` of the declaration, else the spec's volumes)."""
    by_dest: dict[str, str] = {}
    for text in [*(declared.get("binds") or []), *volumes]:
        src, sep, rest = str(text).partition(":")
        if not sep or not src.startswith("/"):
            continue
        dest = rest.split(":", 1)[0].rstrip("/") or "/"
        by_dest.setdefault(dest, os.path.normpath(src))
    return tuple(replace(m, host_path=by_dest.get(m.mountpoint.rstrip("/") or "/", m.host_path))
                 for m in mounts)  # fmt: skip


def collect_gvisor(container: Target, keys: tuple[str, ...], proc: Path = Path("/proc")) -> Facts:
    """Facts of a container under gVisor: each field from the side ``GVISOR_SOURCES`` names."""
    pid, runtime = container.host_pid, container.runtime
    try:  # the host side: the sandbox as a whole (its Sentry process and cgroup)
        cgroup = cgroups.read_limits(pid, proc_root=proc)
        label = procfs.parse_attr_current(
            facts._read_optional(proc / str(pid) / "attr" / "current")
        )
        host_bounding = procfs.parse_status(facts._read(os.getpid(), "status", proc)).cap_bounding
    except (ProbeError, OSError, ContainerSecError) as exc:
        raise ProbeError(runtime, f"the sandbox's host side: {exc}") from None
    view = container.probe_exec(["sh", "-c", VIEW_SCRIPT], timeout=facts.PROBE_TIMEOUT)
    if view.rc != 0:
        raise ProbeError(runtime, f"the sandbox view exec failed ({view.rc}): {view.stderr[-500:]}")
    try:
        seen = parse_view(view.stdout)
        uid_map = procfs.parse_id_map(seen.uid_map, "/proc/self/uid_map (gVisor)")
        gid_map = procfs.parse_id_map(seen.gid_map, "/proc/self/gid_map (gVisor)")
        mountinfo = procfs.parse_mountinfo(seen.mountinfo, "/proc/self/mountinfo (gVisor)")
    except ContainerSecError as exc:
        raise ProbeError(runtime, str(exc)) from None
    masks = masking.assess(mountinfo)
    probed = keys + tuple(k for k in masking.probe_keys(masks) if k not in keys)
    tampered: tuple[str, ...] = ()
    try:
        result = container.probe_exec(probe.argv(probed), timeout=facts.PROBE_TIMEOUT)
    except ProbeModified as exc:
        raise ProbeError(
            runtime, f"the probe folder was modified: {'; '.join(exc.problems)}"
        ) from None
    except ExecTimeout:
        raise ExecTimeout(runtime, ["(containersec probe)", *keys], facts.PROBE_TIMEOUT) from None
    tampered = container.check_probe()
    if tampered:  # nothing the workload's side reported is kept; there is no host view
        raise ProbeError(runtime, f"the probe folder was modified: {'; '.join(tampered)}")
    if result.rc != 0:
        raise ProbeError(runtime, f"the probe exec failed with status {result.rc}: "
                                  f"{result.stderr.strip()[-1000:]}")  # fmt: skip
    try:
        out = probe.parse(result.stdout, probed)
        status_text = complete_status(out.status_text, seen.prctl)
        inside = procfs.parse_status(status_text, "/proc/self/status (gVisor)")
    except ContainerSecError as exc:
        raise ProbeError(runtime, str(exc)) from None
    declared = container.declared()
    composed = facts.compose(
        runtime=runtime,
        engine_rootless=container.engine_rootless,
        pid=pid,
        status=inside,  # the workload's own credentials, as the Sentry emulates them
        uid_map=uid_map,
        gid_map=gid_map,
        mountinfo=mountinfo,
        host_mountinfo=(),  # gVisor's devices are its own: no host path by device
        lsm=Lsm(procfs.read_host_lsm(), label),
        host_capabilities=host_bounding,
        socket_mounts=(),
        cgroup=cgroup,
        namespaces=namespaces(seen.links, _our_namespaces(proc)),
        probe_out=out,
        inside_status=inside,
        declared=declared,
    )
    mounts = declared_host_paths(composed.mounts, declared, tuple(container.spec.volumes))
    composed = replace(
        composed,
        mounts=mounts,
        host_root_mounts=facts._host_root_mounts(mounts),
        engine_sockets=facts._engine_sockets(mounts, out.sockets, ()),
        sources=dict(GVISOR_SOURCES),
    )
    said = {m.field for m in composed.mismatches if m.source == "declared"}
    extra = [m for m in facts.declared_mismatches(composed, facts.requested(container.spec), "spec")
             if m.field not in said]  # fmt: skip
    return replace(
        composed,
        mismatches=composed.mismatches + tuple(extra),
        masked=masking.settle(masks, out.access),
        access={k: v for k, v in composed.access.items() if k in keys},
    )
