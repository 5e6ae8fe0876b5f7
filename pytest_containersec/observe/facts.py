"""Collect Facts: the main process read from the host's /proc, plus one probe exec inside."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ProbeError, ProbeParseError
from ..linux import cgroups, identity, masking, processes, procfs
from ..linux.processes import ProcessSelector
from ..model import (
    PROBE_MISMATCH_FIELD,
    AccessResult,
    Declared,
    Facts,
    Lsm,
    Mismatch,
    Mount,
    ProbeIdentity,
    User,
    unmap_id,
)
from ..spec import ContainerSpec, parse_size
from . import analyze, identity_probe, probe, surface_files
from .target import PROBE_DIR

if TYPE_CHECKING:
    from .target import Target

__all__ = [
    "AccessResult",
    "Facts",
    "collect",
    "compose",
    "declared_mismatches",
    "mark_probe_tampered",
]

NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
PROBE_TIMEOUT = 30.0
ENGINE_SOCKET_NAMES = (
    "docker.sock",
    "podman.sock",
    "containerd.sock",
    "crio.sock",
    "buildkitd.sock",
    "dockershim.sock",
)


def _read(pid: int, name: str, proc: Path) -> str:
    try:
        return (proc / str(pid) / name).read_text()
    except FileNotFoundError:
        raise ProbeError("host", f"process {pid} is gone (the container exited?)") from None
    except OSError as exc:
        raise ProbeError("host", f"cannot read /proc/{pid}/{name}: {exc}") from None


def _namespaces(pid: int, proc: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for ns in NAMESPACES:
        try:
            theirs = os.readlink(proc / str(pid) / "ns" / ns)
            ours = os.readlink(proc / "self" / "ns" / ns)
        except OSError:
            continue
        out[ns] = "host" if theirs == ours else "private"
    return out


def host_paths(
    mounts: tuple[procfs.MountInfo, ...], host_mounts: tuple[procfs.MountInfo, ...]
) -> list[str | None]:
    """For each container mount, the host path it exposes when its file system is
    mounted on the host too (bind mounts of host files, folders and sockets)."""
    by_dev: dict[tuple[int, int], list[procfs.MountInfo]] = {}
    for hm in host_mounts:
        by_dev.setdefault((hm.major, hm.minor), []).append(hm)
    out: list[str | None] = []
    for m in mounts:
        best: str | None = None
        best_len = -1
        for hm in by_dev.get((m.major, m.minor), []):
            root = hm.root.rstrip("/")
            inside = m.root == hm.root or m.root.startswith(root + "/") or hm.root == "/"
            if inside and len(root) > best_len:
                rel = m.root[len(root) :].rstrip("/")
                best = (hm.mountpoint.rstrip("/") + rel) or "/"
                best_len = len(root)
        out.append(best)
    return out


def engine_socket_mounts(
    mountinfo: tuple[procfs.MountInfo, ...], host_mountinfo: tuple[procfs.MountInfo, ...]
) -> tuple[str, ...]:
    """Mount points that are an engine API socket of this host, however they are named
    inside (compared by device and inode with the host's known sockets)."""
    import glob
    import stat

    known: set[tuple[int, int]] = set()
    for path in (*probe.SOCKET_PATHS, *glob.glob("/run/user/*/docker.sock"),
                 *glob.glob("/run/user/*/podman/podman.sock")):  # fmt: skip
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            known.add((st.st_dev, st.st_ino))
    found = []
    for mi, hp in zip(mountinfo, host_paths(mountinfo, host_mountinfo), strict=True):
        if hp is None:
            continue
        try:
            st = os.stat(hp)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) in known:
            found.append(mi.mountpoint)
    return tuple(found)


def _engine_sockets(
    mounts: tuple[Mount, ...], inside: dict[str, bool], host_known: tuple[str, ...]
) -> tuple[str, ...]:
    found = set(inside) | set(host_known)
    for m in mounts:
        for path in (m.mountpoint, m.host_path or ""):
            if path.rsplit("/", 1)[-1] in ENGINE_SOCKET_NAMES:
                found.add(m.mountpoint)
    return tuple(sorted(found))


def _host_root_mounts(mounts: tuple[Mount, ...]) -> tuple[str, ...]:
    return tuple(m.mountpoint for m in mounts if m.host_path == "/")


def collect(
    container: Target,
    access: tuple[str, ...] = (),
    proc: Path = Path("/proc"),
    process: ProcessSelector | None = None,
) -> Facts:
    """A snapshot of ``container``: host-side /proc and cgroup files, and one probe exec
    (two when the probe must take on the process's identity with setpriv).

    ``process``: whose identity and confinement the snapshot is about (a pid inside the
    container, a name or a predicate over :class:`model.ProcessRecord`); the main process
    when None."""
    runtime = container.runtime
    keys = tuple(dict.fromkeys(probe.DEFAULT_ACCESS + tuple(access)))
    if container.sandbox == "gvisor":  # host_pid is the Sentry: see facts_sandbox
        from .facts_sandbox import collect_gvisor

        return collect_gvisor(container, keys, proc)
    try:
        uid_map = procfs.parse_id_map(_read(container.host_pid, "uid_map", proc))
        gid_map = procfs.parse_id_map(_read(container.host_pid, "gid_map", proc))
        procs = processes.read_processes(container.host_pid, uid_map, gid_map, proc)
        chosen = (
            next((p for p in procs if p.main), None)
            if process is None
            else processes.select(procs, process)
        )
        pid = container.host_pid if chosen is None else chosen.host_pid
        host_status = procfs.parse_status(_read(pid, "status", proc))
        mountinfo = procfs.parse_mountinfo(_read(pid, "mountinfo", proc))
        host_mountinfo = procfs.parse_mountinfo(_read(os.getpid(), "mountinfo", proc))
        label = procfs.parse_attr_current(_read_optional(proc / str(pid) / "attr" / "current"))
        cgroup = cgroups.read_limits(pid, proc_root=proc)
        namespaces = _namespaces(pid, proc)
        rlimits = processes.read_limits(pid, proc)
        oom = processes.read_oom_score_adj(pid, proc)
    except ProbeError as exc:
        raise ProbeError(runtime, f"{exc.reason}; logs:\n{container.logs()[-2000:]}") from None
    except ProbeParseError as exc:
        raise ProbeError(runtime, f"{exc}; logs:\n{container.logs()[-2000:]}") from None
    # The probe folder is checked before (every exec does) and after the exec: results
    # of a probe the container modified, even for a moment it did not cover up, are
    # never used.
    masks = masking.assess(mountinfo)  # the probe opens the paths no mount decides
    probed = keys + tuple(k for k in masking.probe_keys(masks) if k not in keys)
    target = identity.credentials(host_status, label, uid_map, gid_map)
    took = identity_probe.run(container, probe.argv(probed), probed, target, PROBE_TIMEOUT)
    out, inside_status, tampered = took.output, took.status, took.tampered
    if tampered:
        out, inside_status = probe.ProbeOutput("", {}, {}, {}), host_status
    declared = container.declared()
    facts = compose(
        runtime=runtime,
        engine_rootless=container.engine_rootless,
        pid=pid,
        status=host_status,
        uid_map=uid_map,
        gid_map=gid_map,
        mountinfo=mountinfo,
        host_mountinfo=host_mountinfo,
        lsm=Lsm(procfs.read_host_lsm(), label),
        host_capabilities=procfs.parse_status(_read(os.getpid(), "status", proc)).cap_bounding,
        socket_mounts=engine_socket_mounts(mountinfo, host_mountinfo),
        cgroup=cgroup,
        namespaces=namespaces,
        probe_out=out,
        inside_status=inside_status,
        declared=declared,
    )
    # What the spec asked for but is not in effect, where the engine did not even declare
    # it (rootless engines drop limits silently): reported once, as a "spec" mismatch.
    # A runtime whose profile decides fields the spec left at their defaults (portable)
    # lists them in declared["profile_decides"]: not asked for, so no "spec" mismatch.
    seen = {m.field for m in facts.mismatches if m.source == "declared"}
    seen.update(declared.get("profile_decides") or ())
    extra = [m for m in declared_mismatches(facts, requested(container.spec), "spec")
             if m.field not in seen]  # fmt: skip
    inside = [m for m in facts.mismatches if m.source == "inside"]
    me = chosen or next(iter(procs), None)
    facts = replace(
        facts,
        mismatches=facts.mismatches + tuple(extra),
        masked=masking.settle(masks, out.access),
        access={k: v for k, v in facts.access.items() if k in keys},
        processes=procs,
        identity=ProbeIdentity(
            pid=host_status.nspid[-1],
            host_pid=pid,
            comm=me.comm if me is not None and me.host_pid == pid else "",
            method="none" if inside else took.method,
            setpriv=took.setpriv,
            unreproduced=identity_probe.reasons(inside, took.reasons),
        ),
        rlimits=rlimits,
        oom_score_adj=oom,
    )
    if process is None and declared.get("systemd_analyze"):  # a unit's own verdicts
        facts = replace(facts, mismatches=facts.mismatches + tuple(analyze.mismatches(facts)))
    facts = surface_files.attach(facts, container, mountinfo, uid_map, gid_map, proc)
    return mark_probe_tampered(facts, tampered) if tampered else facts


def mark_probe_tampered(facts: Facts, problems: tuple[str, ...]) -> Facts:
    """Facts of a container that modified its probe folder: no access or operation result
    is kept, and a ``probe`` mismatch says what changed. Checks then give no access or
    operation verdict (checks.probe_differs) and count the attempts as exposed."""
    if facts.probe_modified is not None:
        return facts
    found = Mismatch(PROBE_MISMATCH_FIELD, "unmodified", "; ".join(problems), "probe")
    return replace(
        facts,
        access={},
        operations={},
        mismatches=(*facts.mismatches, found),
    )


def _read_optional(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def compose(
    *,
    runtime: str,
    engine_rootless: bool,
    pid: int,
    status: procfs.Status,
    uid_map: tuple[tuple[int, int, int], ...],
    gid_map: tuple[tuple[int, int, int], ...],
    mountinfo: tuple[procfs.MountInfo, ...],
    host_mountinfo: tuple[procfs.MountInfo, ...],
    lsm: Lsm,
    cgroup: Any,
    namespaces: dict[str, str],
    probe_out: probe.ProbeOutput,
    inside_status: procfs.Status,
    declared: Declared,
    host_capabilities: tuple[str, ...] = (),
    socket_mounts: tuple[str, ...] = (),
) -> Facts:
    """Assemble Facts from parsed parts (pure: tested on recorded samples)."""
    hp = host_paths(mountinfo, host_mountinfo)
    mounts = tuple(
        replace(procfs.to_mount(mi), host_path=path)
        for mi, path in zip(mountinfo, hp, strict=True)
        if not (mi.mountpoint == PROBE_DIR or mi.mountpoint.startswith(PROBE_DIR + "/"))
    )
    root_mounts = [m for m in mounts if m.mountpoint == "/"]
    host_uid, host_gid = status.uid[1], status.gid[1]
    uid = unmap_id(uid_map, host_uid)
    gid = unmap_id(gid_map, host_gid)
    facts = Facts(
        runtime=runtime,
        engine_rootless=engine_rootless,
        host_pid=pid,
        user=User(
            uid=65534 if uid is None else uid,
            gid=65534 if gid is None else gid,
            host_uid=host_uid,
            host_gid=host_gid,
            groups=tuple(
                65534 if g is None else g for g in (unmap_id(gid_map, h) for h in status.groups)
            ),
        ),
        uid_map=uid_map,
        gid_map=gid_map,
        capabilities=status.capabilities(),
        seccomp=status.seccomp,
        no_new_privs=status.no_new_privs,
        lsm=lsm,
        cgroup=cgroup,
        rootfs_read_only=bool(root_mounts) and root_mounts[-1].read_only,
        mounts=mounts,
        access=probe_out.access,
        operations=probe_out.operations,
        namespaces=namespaces,
        engine_sockets=_engine_sockets(mounts, probe_out.sockets, socket_mounts),
        host_root_mounts=_host_root_mounts(mounts),
        declared=declared,
        host_capabilities=host_capabilities,
    )
    mismatches = declared_mismatches(facts)
    if probe_out.status_text:  # empty: the probe was modified, it reported nothing
        mismatches += inside_mismatches(
            status, uid_map, gid_map, lsm.label, inside_status, probe_out.label
        )
    return replace(facts, mismatches=tuple(mismatches))


def inside_mismatches(
    status: procfs.Status,
    uid_map: tuple[tuple[int, int, int], ...],
    gid_map: tuple[tuple[int, int, int], ...],
    label: str | None,
    inside: procfs.Status,
    inside_label: str | None,
) -> list[Mismatch]:
    """Where the probe's own view of itself differs from the host's view of the process
    under test: every part of its identity (ids, groups, the five capability sets,
    seccomp mode and filter count, no_new_privs, LSM label). An exec that escapes
    confinement, or a process that changed itself in a way the probe could not follow."""
    target = identity.credentials(status, apparmor_ns_view(label, inside_label), uid_map, gid_map)
    probe_view = identity.credentials(inside, inside_label)
    return [
        Mismatch(name, host, claimed, "inside")
        for name, host, claimed in identity.differences(target, probe_view)
    ]


def apparmor_ns_view(label: str | None, inside: str | None) -> str | None:
    """The host's label as a task inside an AppArmor policy namespace sees it, when the
    probe's view is exactly that: a stack across a namespace (Incus:
    ``P//&:NS:Q (enforce)``, measured) shows a task in NS only its own part ``Q`` (pure).
    Anything else, the host's label as it is (a real difference stays one)."""
    if label is None or inside is None or "//&:" not in label:
        return label
    ns, sep, own = label.rsplit("//&:", 1)[1].partition(":")
    if not sep or not ns or not own:
        return label
    name = own.rsplit(" (", 1)[0] if own.endswith(")") else own
    return inside if inside in (own, name) else label


def requested(spec: ContainerSpec) -> Declared:
    """The spec in the normalized shape of ``declared`` (what the user asked for)."""
    out: Declared = {
        "user": spec.user,
        "cap_add": list(spec.cap_add),
        "cap_drop": list(spec.cap_drop),
        "privileged": spec.privileged,
        "seccomp": "default"
        if spec.seccomp == "default"
        else "unconfined"
        if spec.seccomp == "unconfined"
        else "custom",
        "no_new_privileges": spec.no_new_privileges,
        "read_only": spec.read_only,
        "memory": None if spec.memory is None else parse_size(spec.memory),
        "cpus": spec.cpus,
        "pids_limit": spec.pids_limit,
        "group_add": [str(g) for g in spec.group_add],
        "tmpfs": [t.target for t in spec.tmpfs_list],
    }
    hosts = spec.namespaces_host
    if "pid" in hosts:
        out["pid_mode"] = "host"
    if "ipc" in hosts:
        out["ipc_mode"] = "host"
    if "uts" in hosts:
        out["uts_mode"] = "host"
    return out


def declared_mismatches(
    facts: Facts, declared: Declared | None = None, source: Literal["declared", "spec"] = "declared"
) -> list[Mismatch]:
    """Where what the engine says it configured (or, with ``source="spec"``, what the
    spec asked for) differs from what is in effect."""
    d = facts.declared if declared is None else declared
    out: list[Mismatch] = []

    def check(name: str, declared: Any, observed: Any) -> None:
        if declared != observed:
            out.append(Mismatch(name, declared, observed, source))

    if "read_only" in d:
        check("rootfs_read_only", bool(d["read_only"]), facts.rootfs_read_only)
    if d.get("memory"):
        check("cgroup.memory_max", d["memory"], facts.cgroup.memory_max)
    if d.get("pids_limit"):
        check("cgroup.pids_max", d["pids_limit"], facts.cgroup.pids_max)
    cpus = d.get("cpus")
    if cpus:
        observed = facts.cgroup.cpu_max
        if observed is None or abs(observed - float(cpus)) > 0.01:
            out.append(Mismatch("cgroup.cpu_max", cpus, observed, source))
    if d.get("no_new_privileges"):
        check("no_new_privs", True, facts.no_new_privs)
    seccomp = d.get("seccomp")
    if seccomp == "unconfined" and facts.seccomp != "disabled":
        out.append(Mismatch("seccomp", "disabled", facts.seccomp, source))
    if seccomp in ("default", "custom") and facts.seccomp != "filter":
        out.append(Mismatch("seccomp", "filter", facts.seccomp, source))
    drops = [c.upper() for c in d.get("cap_drop") or []]
    if ("ALL" in drops or "CAP_ALL" in drops) and not d.get("cap_add") and not d.get("privileged"):
        check("capabilities.bounding", (), facts.capabilities.bounding)
    user = d.get("user")
    if isinstance(user, str) and user.split(":")[0].isdigit():
        check("user.uid", int(user.split(":")[0]), facts.user.uid)
    return out + _more_mismatches(facts, d, source)


def _more_mismatches(
    facts: Facts, d: Declared, source: Literal["declared", "spec"]
) -> list[Mismatch]:
    """Host namespaces, numeric supplementary groups and tmpfs mounts, where observable."""
    out: list[Mismatch] = []
    modes = (("pid", d.get("pid_mode")), ("ipc", d.get("ipc_mode")), ("uts", d.get("uts_mode")))
    for ns, mode in modes:
        seen = facts.namespaces.get(ns)
        want = "host" if mode == "host" else "private" if mode in ("private", "shareable") else None
        if want and seen and seen != want:
            out.append(Mismatch(f"namespaces.{ns}", want, seen, source))
    gids = {int(g) for g in d.get("group_add") or [] if str(g).isdigit()}
    if gids - set(facts.user.groups):
        out.append(Mismatch("user.groups", sorted(gids), list(facts.user.groups), source))
    tmpfs = {m.mountpoint for m in facts.mounts if m.fstype == "tmpfs"}
    for target in d.get("tmpfs") or []:
        if target not in tmpfs:
            out.append(Mismatch(f"mounts.{target}", "tmpfs", "no tmpfs there", source))
    return out
