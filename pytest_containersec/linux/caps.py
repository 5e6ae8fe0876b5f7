"""Linux capability names by bit number (all 41 the kernel defines as of 6.x)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ProbeParseError

CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_BITS: dict[str, int] = {name: bit for bit, name in enumerate(CAP_NAMES)}
ALL_CAPS: frozenset[str] = frozenset(CAP_NAMES)

# Docker's and Podman's default capability set (moby/oci/caps/defaults.go,
# containers/common pkg/config/default.go; Podman drops CAP_NET_RAW, CAP_MKNOD and
# CAP_AUDIT_WRITE since 4.x, which is why the facts, not this table, are what is checked).
DOCKER_DEFAULT_CAPS: frozenset[str] = frozenset(
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    }
)  # fmt: skip


def bit_name(bit: int) -> str:
    """The CAP_* name of a bit; unknown (future) bits are ``CAP_<n>``, never dropped."""
    return CAP_NAMES[bit] if 0 <= bit < len(CAP_NAMES) else f"CAP_{bit}"


def normalize(name: str) -> str:
    """``sys_admin``, ``SYS_ADMIN`` and ``CAP_SYS_ADMIN`` all become ``CAP_SYS_ADMIN``.

    ``ALL`` stays ``ALL``. Raises ``ValueError`` for a name the kernel does not define.
    """
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full in CAP_BITS:
        return full
    suffix = full[4:]
    if suffix.isdigit():
        return f"CAP_{int(suffix)}"
    raise ValueError(f"unknown capability {name!r}")


def normalize_set(names: Iterable[str]) -> frozenset[str]:
    """Normalize names; ``ALL`` expands to every known capability."""
    out: set[str] = set()
    for name in names:
        n = normalize(name)
        if n == "ALL":
            out |= ALL_CAPS
        else:
            out.add(n)
    return frozenset(out)


def decode_mask(hexmask: str, source: str = "capability mask") -> tuple[str, ...]:
    """Decode a /proc/<pid>/status ``Cap*`` hex mask into sorted names."""
    text = hexmask.strip()
    if not text or len(text) > 16 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ProbeParseError(source, f"not a 64-bit hex mask: {hexmask!r}")
    value = int(text, 16)
    return tuple(sorted(bit_name(b) for b in range(64) if value >> b & 1))


def encode(names: Iterable[str]) -> int:
    """The bit mask of a set of capability names (inverse of :func:`decode_mask`)."""
    mask = 0
    for name in names:
        n = normalize(name)
        mask |= 1 << (CAP_BITS[n] if n in CAP_BITS else int(n[4:]))
    return mask


def tweak(
    default: frozenset[str], cap_add: Iterable[str], cap_drop: Iterable[str], privileged: bool
) -> frozenset[str]:
    """Docker's TweakCapabilities arithmetic over an engine's ``default`` set: privileged
    or ``cap_add ALL`` grant everything (minus the drops), ``cap_drop ALL`` keeps only the
    adds, else the default minus the drops plus the adds."""
    if privileged:
        return ALL_CAPS
    add, drop = set(cap_add), set(cap_drop)
    if "ALL" in add:
        return frozenset(ALL_CAPS - normalize_set(drop - {"ALL"}))
    if "ALL" in drop:
        return normalize_set(add)
    return frozenset((default - drop) | add)
