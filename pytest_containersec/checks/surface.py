"""Attack-surface checks: privileged mode, sensitive host mounts, shared namespaces."""

from __future__ import annotations

from ..linux.masking import READONLY_SUFFICES, STANDARD_PATHS, describe
from ..model import Facts, Mount, map_id
from .check_params import KernelPath, Namespaces
from .check_registry import check
from .verdict import ABSENT, Violation, caps_text

# Host paths whose exposure inside a container hands over the host (or its engine).
SENSITIVE_HOST_PATHS = (
    "/",
    "/etc",
    "/root",
    "/home",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containers",
    "/var/lib/kubelet",
    "/var/log",
    "/usr",
    "/lib",
    "/bin",
    "/sbin",
)
# Files an engine bind-mounts into every container from its own per-container folder.
ENGINE_MANAGED_MOUNTS = (
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run/.containerenv",
    "/dev/shm",
    "/run/secrets",
    "/etc/passwd",  # Podman writes these when the user is not in the image's files
    "/etc/group",
)
ENGINE_STATE_MARKERS = ("/containers/", "/docker/", "/libpod/", "/containersec/")
# Harmless host device nodes rootless engines bind in (they cannot mknod) or use to mask.
SAFE_HOST_DEVICES = frozenset(
    {
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/console",
    }
)
# (fusectl: LXC binds the host's by default; its files are host root's, 0200/0400)
PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "mqueue", "devpts", "fusectl"})
# Privileged mode's signature in capabilities: what Docker/Podman never grant by default.
PRIVILEGED_CAPS = frozenset(
    {
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_PTRACE",
        "CAP_SYS_BOOT",
        "CAP_MAC_ADMIN",
        "CAP_NET_ADMIN",
        "CAP_DAC_READ_SEARCH",
    }
)


def privileged_caps(f: Facts) -> str | None:
    """Why the bounding set looks like privileged mode's, or None."""
    bnd = set(f.capabilities.bounding)
    if f.host_capabilities and set(f.host_capabilities) <= bnd:
        return "the bounding set holds every capability the host has"
    if bnd >= PRIVILEGED_CAPS:
        return f"the bounding set holds {caps_text(PRIVILEGED_CAPS)}"
    return None


def privileged_signs(f: Facts) -> list[str]:
    """What in the observed state is the signature of privileged mode."""
    caps_sign = privileged_caps(f)
    signs = [caps_sign] if caps_sign else []
    if f.probe_modified is not None:
        signs.append("it rewrote or covered its read-only probe mount (/.containersec)")
    if f.seccomp == "disabled":
        signs.append("seccomp is disabled")
    for key, what in (("write_sysfs", "/sys is writable"),):
        r = f.operations.get(key)
        if r is not None and r.allowed:
            signs.append(what)
    for key in ("/proc/sys/kernel/core_pattern:w", "/proc/sysrq-trigger:w"):
        r = f.access.get(key)
        if r is not None and r.allowed:
            signs.append(f"{key.rsplit(':', 1)[0]} is writable")
    mem = f.access.get("/dev/mem:r")
    if mem is not None and mem.allowed:
        signs.append("/dev/mem is readable (host devices exposed)")
    return signs


@check("The container must not run in privileged mode")
def not_privileged(f: Facts) -> list[Violation]:
    """Fails on privileged mode's capabilities or writable kernel interfaces / host devices;
    a disabled seccomp filter alone is not privileged mode (check it with ``seccomp``)."""
    signs = privileged_signs(f)
    if not [s for s in signs if s != "seccomp is disabled"]:
        return []
    hint = "drop --privileged; grant single capabilities instead"
    if map_id(f.uid_map, 0) not in (0, None):
        hint += " (a user namespace limits it to the container's own namespace)"
    return [
        Violation("not_privileged", f.runtime, "no privileged-mode signs", "; ".join(signs), hint)
    ]


def _is_engine_managed(m: Mount) -> bool:
    hp = m.host_path or ""
    if m.mountpoint in ENGINE_MANAGED_MOUNTS and any(s in hp for s in ENGINE_STATE_MARKERS):
        return True
    # systemd-nspawn: the host's os-release and its propagation folder under /run/host,
    # and the host's time zone file as /etc/localtime
    if m.mountpoint.startswith("/run/host/") and (
        hp in ("/usr/lib/os-release", "/etc/os-release") or hp.startswith("/run/systemd/nspawn/")
    ):
        return True
    return m.mountpoint == "/etc/localtime" and hp.startswith("/usr/share/zoneinfo/")


def sensitive_mounts(f: Facts) -> list[str]:
    """Mounts that expose the host: its root, engine sockets, sensitive host folders."""
    found = [f"host root at {p}" for p in f.host_root_mounts]
    found += [f"engine API socket at {s}" for s in f.engine_sockets]
    for m in f.mounts:
        hp = m.host_path
        if hp is None or hp == "/" or _is_engine_managed(m) or m.mountpoint in f.engine_sockets:
            continue
        if hp in SAFE_HOST_DEVICES:
            continue
        if m.fstype in PSEUDO_FS or m.mountpoint == "/":  # kernel views; the own rootfs
            continue
        for s in SENSITIVE_HOST_PATHS:
            if s != "/" and (hp == s or hp.startswith(s + "/")):
                found.append(f"host {hp} at {m.mountpoint}{' (ro)' if m.read_only else ''}")
                break
    return found


@check("No host root, engine socket or sensitive folder may be mounted")
def no_sensitive_mounts(f: Facts) -> list[Violation]:
    """No host root, engine API socket (docker.sock, podman.sock, ...) or sensitive host
    folder (/etc, /root, /var/run, /var/lib/docker, ...) is mounted into the container;
    engine-managed files and harmless device binds are not counted."""
    found = sensitive_mounts(f)
    if not found:
        return []
    return [
        Violation(
            "no_sensitive_mounts",
            f.runtime,
            "no host root, engine socket or sensitive host folder mounted",
            "; ".join(found),
            "whoever reaches an engine socket or the host root owns the host",
        )
    ]


@check("Host namespaces must not be shared", legacy=("namespaces",))
def namespaces_private(
    f: Facts, names: Namespaces = ("net", "pid", "ipc", "uts")
) -> list[Violation]:
    """These namespaces are the container's own, not the host's."""
    names = tuple(names)
    shared = [n for n in names if f.namespaces.get(n) == "host"]
    unknown = [n for n in names if n not in f.namespaces]
    out = []
    if shared:
        out.append(
            Violation(
                "namespaces_private",
                f.runtime,
                f"private {', '.join(names)}",
                f"shares the host's {', '.join(shared)}",
            )
        )
    if unknown:
        out.append(
            Violation(
                "namespaces_private", f.runtime, f"private {', '.join(unknown)}", "not observed"
            )
        )
    return out


# -- masked kernel paths ----------------------------------------------------------------

_MASK_HINT = (
    "the engine did not mask it: --privileged, --security-opt systempaths=unconfined "
    "(unmask), or an engine that does not mask this path"
)


def _masked_path(f: Facts, path: str, family: str, accept: frozenset[str]) -> list[Violation]:
    if path not in STANDARD_PATHS:
        raise ValueError(f"{path!r} is not observed; one of {', '.join(STANDARD_PATHS)}")
    want = "masked" if family == "masked" else "read-only or masked"
    m = f.masked.get(path)
    if m is None:
        return [Violation(family, f.runtime, f"{path} {want}", "not observed (older Facts)")]
    if m.state in accept:
        return []
    if m.state == "absent":
        return [
            Violation(
                family,
                f.runtime,
                f"{path} {want}",
                f"{ABSENT} (the host has no {path}: nothing to mask, not proven here)",
                "prove it on a host whose kernel has the path",
                absent=True,
            )
        ]
    return [Violation(family, f.runtime, f"{path} {want}", describe(m), _MASK_HINT)]


@check("Kernel paths the engines mask must be masked (absent on the host: not judged)")
def masked(f: Facts, path: KernelPath) -> list[Violation]:
    """``path`` (one of the engines' masked or read-only paths) is masked: something is
    mounted over it (``/dev/null``, an empty tmpfs, an inaccessible node) or the workload
    cannot open it. For /proc/sys, /proc/sysrq-trigger, /proc/bus, /proc/fs, /proc/irq and
    /proc/asound, whose engine notion is a read-only bind, read-only passes too. A path the
    host kernel lacks gives an ``absent`` note, not a pass."""
    accept = {"masked", "readonly"} if path in READONLY_SUFFICES else {"masked"}
    return _masked_path(f, path, "masked", frozenset(accept))


@check("Kernel paths the engines make read-only must not be writable")
def readonly_path(f: Facts, path: KernelPath) -> list[Violation]:
    """``path`` cannot be written from inside: masked or read-only."""
    return _masked_path(f, path, "readonly_path", frozenset({"masked", "readonly"}))
