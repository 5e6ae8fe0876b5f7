"""The probe takes on the workload's identity: uid, gid, supplementary groups, all five
capability sets and no_new_privs of the process its verdicts are for.

The engine's exec already runs in the container's namespaces, cgroup, seccomp filter and
LSM label. When the process under test runs with other credentials than an exec gets (an
entrypoint that dropped to ``postgres``, nginx's ``www-data`` workers), the probe runs
again as the container's root, under the host's util-linux ``setpriv`` (run by the
host's own loader from the probe folder's ``tools/``, so the image needs nothing) with
exactly those credentials. Afterwards the probe's own ``/proc/self/status`` is compared
with the process's (every part below); whatever still differs is named with the reason it
cannot be reproduced, and access verdicts are refused for it (``checks.probe_differs``).

What an exec cannot reproduce, and says so: a seccomp filter the process installed itself
(more filters than the exec's), another LSM label, no_new_privs the engine set on the
exec and the process lacks, a capability the exec lacks in its bounding set, permitted or
effective capabilities of a non-root process beyond its ambient set (only ambient ones
survive an exec), a root process's effective set narrower than its bounding set, and a
saved set-user-ID other than the effective one (an exec sets saved = effective).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import MapEntry, SeccompMode, unmap_id
from . import caps, procfs

TOOLS = "/.containersec/tools"  # the probe folder's setpriv, its loader and libraries
SETPRIV_ARGV0 = [f"{TOOLS}/ld.so", "--library-path", TOOLS, f"{TOOLS}/setpriv"]
OVERFLOW_ID = 65534


@dataclass(frozen=True)
class Credentials:
    """Everything of a process's identity an access check depends on, as the container
    sees it (ids mapped back through uid_map/gid_map; an unmapped id is None)."""

    uids: tuple[int | None, ...]  # real, effective, saved, fs
    gids: tuple[int | None, ...]
    groups: tuple[int | None, ...]
    effective: frozenset[str]
    permitted: frozenset[str]
    inheritable: frozenset[str]
    ambient: frozenset[str]
    bounding: frozenset[str]
    seccomp: SeccompMode
    seccomp_filters: int | None  # Seccomp_filters: (kernel >= 5.9), None when absent
    no_new_privs: bool
    label: str | None  # LSM label (None: no labelling LSM, or not known)


def credentials(
    status: procfs.Status,
    label: str | None,
    uid_map: tuple[MapEntry, ...] | None = None,
    gid_map: tuple[MapEntry, ...] | None = None,
) -> Credentials:
    """Credentials of a parsed status. With maps, ids are host ids mapped back into the
    container (the host's view); without, they are taken as they are (the probe's own
    view from inside)."""

    def ids(values: tuple[int, ...], idmap: tuple[MapEntry, ...] | None) -> tuple[int | None, ...]:
        return values if idmap is None else tuple(unmap_id(idmap, v) for v in values)

    return Credentials(
        uids=ids(status.uid, uid_map),
        gids=ids(status.gid, gid_map),
        groups=tuple(sorted(ids(status.groups, gid_map), key=lambda g: -1 if g is None else g)),
        effective=frozenset(status.cap_effective),
        permitted=frozenset(status.cap_permitted),
        inheritable=frozenset(status.cap_inheritable),
        ambient=frozenset(status.cap_ambient),
        bounding=frozenset(status.cap_bounding),
        seccomp=status.seccomp,
        seccomp_filters=status.seccomp_filters,
        no_new_privs=status.no_new_privs,
        label=label,
    )


def _show(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return [OVERFLOW_ID if v is None else v for v in value]
    return value


def differences(target: Credentials, probe: Credentials) -> list[tuple[str, object, object]]:
    """(field, the process's value, the probe's value) for every part that differs.
    Field names are the Facts' (``user.uid`` is the effective uid)."""
    out: list[tuple[str, object, object]] = []

    def cmp(name: str, a: object, b: object) -> None:
        if a != b:
            out.append((name, _show(a), _show(b)))

    def uid(v: int | None) -> int:
        return OVERFLOW_ID if v is None else v

    cmp("user.uid", uid(target.uids[1]), uid(probe.uids[1]))
    if target.uids[1] == probe.uids[1]:
        cmp("user.uids", target.uids, probe.uids)
    cmp("user.gid", uid(target.gids[1]), uid(probe.gids[1]))
    if target.gids[1] == probe.gids[1]:
        cmp("user.gids", target.gids, probe.gids)
    # access checks see the fs gid and the supplementary groups together: a supplementary
    # group equal to the gid (Podman adds the primary group, its exec does not) is no
    # difference
    cmp("user.groups", _membership(target), _membership(probe))
    for name in ("effective", "permitted", "inheritable", "ambient", "bounding"):
        cmp(f"capabilities.{name}", getattr(target, name), getattr(probe, name))
    cmp("seccomp", target.seccomp, probe.seccomp)
    if target.seccomp_filters is not None and probe.seccomp_filters is not None:
        cmp("seccomp.filters", target.seccomp_filters, probe.seccomp_filters)
    cmp("no_new_privs", target.no_new_privs, probe.no_new_privs)
    if target.label is not None and probe.label is not None:
        cmp("lsm.label", target.label, probe.label)
    return out


def _membership(c: Credentials) -> tuple[int | None, ...]:
    return tuple(sorted({*c.groups, c.gids[3]}, key=lambda g: -1 if g is None else g))


def _caps_arg(names: frozenset[str]) -> str:
    return ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(names))])


def unreproducible(target: Credentials, exec_creds: Credentials) -> list[str]:
    """Parts of ``target`` no exec can take on, whatever it runs as (pure)."""
    out: list[str] = []
    if None in (*target.uids, *target.gids, *target.groups):
        out.append("user: an id of the process is not mapped into the container")
    if (
        target.seccomp_filters is not None
        and exec_creds.seccomp_filters is not None
        and target.seccomp_filters > exec_creds.seccomp_filters
    ):
        n = target.seccomp_filters - exec_creds.seccomp_filters
        out.append(
            f"seccomp.filters: the process installed {n} seccomp filter(s) of its own "
            f"({target.seccomp_filters} in effect, an exec gets {exec_creds.seccomp_filters})"
        )
    if target.seccomp != exec_creds.seccomp:
        out.append(
            f"seccomp: the process runs in mode {target.seccomp}, an exec in {exec_creds.seccomp}"
        )
    labels = (target.label, exec_creds.label)
    if None not in labels and labels[0] != labels[1]:
        out.append(
            f"lsm.label: the process runs as {target.label!r}, an exec as {exec_creds.label!r}"
        )
    if exec_creds.no_new_privs and not target.no_new_privs:
        out.append("no_new_privs: the engine sets it on every exec; it cannot be cleared")
    lacking = target.bounding - exec_creds.bounding
    if lacking:
        out.append(
            f"capabilities.bounding: the exec lacks {', '.join(sorted(lacking))} in its "
            "bounding set; a capability once dropped from it cannot be regained"
        )
    named = target.bounding | target.inheritable | target.ambient
    unknown = {c for c in named if c not in caps.ALL_CAPS}
    if unknown:
        out.append(f"capabilities: setpriv cannot name {', '.join(sorted(unknown))}")
    root = target.uids[0] == 0 or target.uids[1] == 0
    permitted = (target.inheritable | target.bounding) if root else target.ambient
    effective = permitted if target.uids[1] == 0 else target.ambient
    for name, after_exec in (("permitted", permitted), ("effective", effective)):
        have = getattr(target, name)
        if have != after_exec:
            why = (
                "an exec as uid 0 gets its whole bounding set (and inheritable set)"
                if root
                else "only ambient capabilities survive an exec as a non-root user"
            )
            out.append(
                f"capabilities.{name}: {sorted(have)} cannot be carried across an exec "
                f"({why}: {sorted(after_exec)})"
            )
    if target.uids[2] != target.uids[1] or target.gids[2] != target.gids[1]:
        out.append("user.uids: a saved set-user/group-ID other than the effective one "
                   "(an exec sets saved = effective)")  # fmt: skip
    return out


def setpriv_options(target: Credentials) -> list[str]:
    """The util-linux setpriv options that give an exec running as the container's root
    exactly ``target``'s ids, groups, bounding/inheritable/ambient sets and no_new_privs
    (its permitted and effective sets then follow from the exec rules)."""
    r, e = target.uids[0], target.uids[1]
    rg, eg = target.gids[0], target.gids[1]
    if None in (r, e, rg, eg) or None in target.groups:
        raise ValueError("an id of the process is not mapped into the container")
    out = [f"--ruid={r}", f"--euid={e}", f"--rgid={rg}", f"--egid={eg}"]
    groups = [str(g) for g in target.groups]
    out.append(f"--groups={','.join(groups)}" if groups else "--clear-groups")
    out.append(f"--bounding-set={_caps_arg(target.bounding)}")
    out.append(f"--inh-caps={_caps_arg(target.inheritable)}")
    out.append(f"--ambient-caps={_caps_arg(target.ambient)}")
    if target.no_new_privs:
        out.append("--nnp")
    return out


def setpriv_argv(options: list[str], command: list[str]) -> list[str]:
    """The argv that runs ``command`` under the probe folder's setpriv with ``options``."""
    return [*SETPRIV_ARGV0, *options, "--", *command]
