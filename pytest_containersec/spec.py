"""ContainerSpec: what to run, validated at construction."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import spec_types as st
from .errors import SpecError
from .linux import caps
from .spec_types import Device, Tmpfs, Ulimit

__all__ = ["ContainerSpec", "Device", "Origin", "Tmpfs", "Ulimit", "Volume", "parse_size"]

DEFAULT_IMAGE = "containersec/probe"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MAP = re.compile(r"^\d+:\d+:\d+$")
USERNS_KEYWORDS = ("host", "auto", "keep-id")
SECCOMP_KEYWORDS = ("default", "unconfined")
_PROPERTY = re.compile(r"^[A-Z][A-Za-z0-9]*$")
NETWORKS = ("none", "host")
# systemd's portable service profiles (portablectl attach --profile=); the portable runtime only
PORTABLE_PROFILES = ("default", "strict", "nonetwork", "trusted")


def parse_size(value: str | int, field_name: str = "memory") -> int:
    """``"64m"`` -> 67108864 (docker's binary units; a bare number is bytes)."""
    if isinstance(value, bool):
        raise SpecError(field_name, value, "expected a size like 64m or a byte count")
    if isinstance(value, int):
        if value <= 0:
            raise SpecError(field_name, value, "must be positive")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise SpecError(field_name, value, "expected a size like 64m, 1g or a byte count")
    number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if number < 1 or number != int(number):
        raise SpecError(field_name, value, "must be a positive whole number of bytes")
    return int(number)


def _tuple_of_str(field_name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SpecError(field_name, value, "expected a list of strings")


def _caps(field_name: str, value: object) -> tuple[str, ...]:
    names = _tuple_of_str(field_name, value)
    try:
        return tuple(sorted({caps.normalize(n) for n in names}))
    except ValueError as exc:
        raise SpecError(field_name, value, str(exc)) from None


def _properties(value: object) -> tuple[tuple[str, str], ...]:
    """Unit properties as sorted ``(name, value)`` pairs; booleans become yes/no."""
    items = value.items() if isinstance(value, Mapping) else value
    if not isinstance(items, Iterable) or isinstance(items, str):
        raise SpecError("properties", value, "expected a mapping of unit property -> value")
    out: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise SpecError("properties", value, "expected (property, value) pairs")
        name, raw = item
        if not isinstance(name, str) or not _PROPERTY.match(name):
            raise SpecError("properties", name, "expected a unit property name like ProtectHome")
        text = ("yes" if raw else "no") if isinstance(raw, bool) else str(raw)
        if any(c in text for c in "\n\r\0"):
            raise SpecError("properties", raw, "a value must be one line")
        out.append((name, text))
    return tuple(sorted(out, key=lambda kv: kv[0]))


@dataclass(frozen=True)
class Volume:
    """A bind mount ``src:dst[:ro]``."""

    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Volume:
        """Parse ``SRC:DST[:ro|rw]``; both paths must be absolute (SpecError otherwise)."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise SpecError("volumes", text, "expected SRC:DST or SRC:DST:ro")
        if not parts[0].startswith("/") or not parts[1].startswith("/"):
            raise SpecError("volumes", text, "source and target must be absolute paths")
        ro = False
        if len(parts) == 3:
            if parts[2] not in ("ro", "rw"):
                raise SpecError("volumes", text, "the option must be ro or rw")
            ro = parts[2] == "ro"
        return cls(parts[0], parts[1], ro)

    def __str__(self) -> str:
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class Origin:
    """The deployment file a spec was read from (``kind``: compose, kube, quadlet, unit):
    metadata, not confinement; only the ``podman-kube`` runtime uses it (it runs the file
    itself)."""

    kind: str
    path: str  # absolute
    name: str  # the compose service, kube container, quadlet or unit file's name
    document: int = 0  # kube: index of the YAML document that holds the workload
    line: int = 0  # the line that names the image (for errors about it)

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}:{self.name}"

    def where(self) -> str:
        """``FILE:LINE`` of the image, for errors."""
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class ContainerSpec:
    """What to run. Frozen, hashable (equal specs share a container), validated."""

    # Inputs may be lists, a dict (env) or "64m" (memory); they are stored normalized:
    # tuples, sorted CAP_* names, Volume objects, bytes.
    image: str = DEFAULT_IMAGE
    command: Sequence[str] = ()
    user: str | None = None
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    privileged: bool = False
    seccomp: str = "default"
    no_new_privileges: bool = False
    read_only: bool = False
    memory: int | str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    userns: str | None = None
    volumes: Sequence[Volume | str] = ()
    network: str = "none"
    env: Mapping[str, str] | Sequence[tuple[str, str]] = field(default=())
    # systemd unit properties (systemd-run only), e.g. {"ProtectHome": "yes"}
    properties: Mapping[str, str | bool | int] | Sequence[tuple[str, str]] = field(default=())
    # None: the image's entrypoint (when a command is given); a list replaces it
    entrypoint: Sequence[str] | None = None
    group_add: Sequence[str | int] = ()  # supplementary groups: names or gids
    devices: Sequence[Device | str] = ()  # "/dev/HOST[:/dev/CONTAINER][:rwm]"
    pid: str = "private"  # private | host
    ipc: str = "private"
    uts: str = "private"
    ulimits: Mapping[str, Any] | Sequence[Ulimit | str] = ()  # {"nofile": "1024:2048"}
    sysctls: Mapping[str, str | int | bool] | Sequence[tuple[str, str]] = ()
    tmpfs: Sequence[Tmpfs | str] = ()  # "/run:size=64m,mode=1777"
    unmask: bool = False  # no masked or read-only kernel paths (systempaths=unconfined)
    gidmap: str | None = None  # gid maps INSIDE:OUTSIDE:COUNT[,...] apart from userns's
    apparmor: str | None = None  # unconfined or a profile name; None: the engine's default
    label: Sequence[str] = ()  # SELinux: disable, user:U, role:R, type:T, level:L
    portable_profile: str = "default"  # portable runtime: default, strict, nonetwork, trusted
    origin: Origin | None = None  # the deployment file (metadata; see Origin)

    def __post_init__(self) -> None:
        s = object.__setattr__
        if not isinstance(self.image, str) or not self.image.strip():
            raise SpecError("image", self.image, "an image name is required")
        s(self, "command", _tuple_of_str("command", self.command))
        if self.user is not None:
            user = str(self.user)
            if not re.fullmatch(
                r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?", user
            ):
                raise SpecError("user", self.user, "expected NAME, UID or UID:GID")
            s(self, "user", user)
        s(self, "cap_add", _caps("cap_add", self.cap_add))
        s(self, "cap_drop", _caps("cap_drop", self.cap_drop))
        for flag in ("privileged", "no_new_privileges", "read_only"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(flag, getattr(self, flag), "expected true or false")
        if self.seccomp not in SECCOMP_KEYWORDS and not str(self.seccomp).startswith("/"):
            raise SpecError(
                "seccomp", self.seccomp, "expected default, unconfined or an absolute profile path"
            )
        if self.memory is not None:
            s(self, "memory", parse_size(self.memory))
        if self.cpus is not None:
            try:
                cpus = float(self.cpus)
            except (TypeError, ValueError):
                raise SpecError("cpus", self.cpus, "expected a number of cores") from None
            if not cpus > 0 or cpus > 4096:
                raise SpecError("cpus", self.cpus, "must be a positive number of cores")
            s(self, "cpus", cpus)
        if self.pids_limit is not None:
            if isinstance(self.pids_limit, bool) or not isinstance(self.pids_limit, int):
                raise SpecError("pids_limit", self.pids_limit, "expected a whole number")
            if self.pids_limit <= 0:
                raise SpecError("pids_limit", self.pids_limit, "must be positive")
        if self.userns is not None:
            maps = [m.strip() for m in str(self.userns).split(",")]
            if self.userns not in USERNS_KEYWORDS and not all(_MAP.match(m) for m in maps):
                raise SpecError(
                    "userns",
                    self.userns,
                    "expected host, auto, keep-id or INSIDE:OUTSIDE:COUNT[,...]",
                )
        vols = self.volumes
        if isinstance(vols, str):
            vols = (vols,)
        s(self, "volumes", tuple(v if isinstance(v, Volume) else Volume.parse(v) for v in vols))
        if self.network not in NETWORKS:
            raise SpecError("network", self.network, "expected none or host")
        env = self.env
        if isinstance(env, Mapping):
            env = tuple(sorted((str(k), str(v)) for k, v in env.items()))
        else:
            env = tuple((str(k), str(v)) for k, v in env)
        s(self, "env", env)
        s(self, "properties", _properties(self.properties))
        self._validate_more()

    def _validate_more(self) -> None:
        s = object.__setattr__
        if self.entrypoint is not None:
            s(self, "entrypoint", _tuple_of_str("entrypoint", self.entrypoint))
        s(self, "group_add", st.groups(self.group_add))
        devs = (self.devices,) if isinstance(self.devices, str) else self.devices
        s(self, "devices", tuple(st.Device.parse(d) for d in devs))
        for ns in ("pid", "ipc", "uts"):
            s(self, ns, st.namespace_mode(ns, getattr(self, ns)))
        s(self, "ulimits", st.ulimits(self.ulimits))
        s(self, "sysctls", st.sysctls(self.sysctls))
        mounts = (self.tmpfs,) if isinstance(self.tmpfs, str) else self.tmpfs
        s(self, "tmpfs", tuple(st.Tmpfs.parse(t) for t in mounts))
        if not isinstance(self.unmask, bool):
            raise SpecError("unmask", self.unmask, "expected true or false")
        if self.gidmap is not None:
            if not self.uid_maps:
                raise SpecError("gidmap", self.gidmap, "needs explicit userns maps (the uid maps)")
            maps = st.id_maps("gidmap", self.gidmap)
            s(self, "gidmap", ",".join(":".join(map(str, m)) for m in maps))
        s(self, "apparmor", st.apparmor(self.apparmor))
        s(self, "label", st.label(self.label))
        if self.portable_profile not in PORTABLE_PROFILES:
            expected = ", ".join(PORTABLE_PROFILES)
            raise SpecError("portable_profile", self.portable_profile, f"expected {expected}")
        if self.origin is not None and not isinstance(self.origin, Origin):
            raise SpecError("origin", self.origin, "set by the deployment-file readers")

    # -- helpers shared by the adapters ------------------------------------------------

    @property
    def uid_maps(self) -> tuple[tuple[int, int, int], ...]:
        """The explicit ``INSIDE:OUTSIDE:COUNT`` maps of ``userns`` (empty for keywords)."""
        if self.userns is None or self.userns in USERNS_KEYWORDS:
            return ()
        out = []
        for m in self.userns.split(","):
            a, b, c = (int(x) for x in m.strip().split(":"))
            out.append((a, b, c))
        return tuple(out)

    @property
    def gid_maps(self) -> tuple[tuple[int, int, int], ...]:
        """The gid maps: ``gidmap`` when given, else the same maps as the uids."""
        return st.id_maps("gidmap", self.gidmap) if self.gidmap else self.uid_maps

    # typed views of the normalized fields (the adapters use these)
    @property
    def device_list(self) -> tuple[Device, ...]:
        """``devices`` as Device values (normalization has parsed every entry)."""
        return tuple(d for d in self.devices if isinstance(d, Device))

    @property
    def tmpfs_list(self) -> tuple[Tmpfs, ...]:
        """``tmpfs`` as Tmpfs values (normalization has parsed every entry)."""
        return tuple(t for t in self.tmpfs if isinstance(t, Tmpfs))

    @property
    def ulimit_list(self) -> tuple[Ulimit, ...]:
        """``ulimits`` as Ulimit values, sorted by name."""
        return tuple(u for u in self.ulimits if isinstance(u, Ulimit))

    @property
    def sysctl_pairs(self) -> tuple[tuple[str, str], ...]:
        """``sysctls`` as sorted ``(name, value)`` pairs, values as text."""
        items = self.sysctls.items() if isinstance(self.sysctls, Mapping) else self.sysctls
        return tuple((str(k), str(v)) for k, v in items)

    @property
    def namespaces_host(self) -> tuple[str, ...]:
        """The namespaces the spec shares with the host, of pid, ipc and uts."""
        return tuple(n for n in ("pid", "ipc", "uts") if getattr(self, n) == "host")

    def non_default_fields(self) -> dict[str, Any]:
        """Fields that differ from their defaults (what an adapter must map)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value
        return out

    def replace(self, **changes: Any) -> ContainerSpec:
        """A copy with ``changes`` applied, normalized and validated again (a bad value raises
        SpecError, as in the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able: structured values in their command-line spelling
        (``SRC:DST:ro``, ``nofile: "1024:2048"``, ``PATH:OPTIONS``), ``origin`` as
        ``KIND:PATH:NAME``."""
        d = dataclasses.asdict(self)
        d["volumes"] = [str(v) for v in self.volumes]
        d["command"] = list(self.command)
        d["cap_add"] = list(self.cap_add)
        d["cap_drop"] = list(self.cap_drop)
        d["env"] = dict(self.env)
        d["properties"] = dict(self.properties)
        if self.entrypoint is not None:
            d["entrypoint"] = list(self.entrypoint)
        d["group_add"] = list(self.group_add)
        d["devices"] = [str(x) for x in self.devices]
        d["ulimits"] = {u.name: f"{u.soft}:{u.hard}" for u in self.ulimit_list}
        d["sysctls"] = dict(self.sysctls)
        d["tmpfs"] = [str(t) for t in self.tmpfs]
        d["label"] = list(self.label)
        d["origin"] = str(self.origin) if self.origin else None
        return d


# Fields every adapter handles by construction: the image it starts, and metadata.
ALWAYS_MAPPED: frozenset[str] = frozenset({"image", "origin"})
# The fields of the first landing, which every runtime maps (or refuses itself).
CORE_FIELDS: tuple[str, ...] = (
    "command", "user", "cap_add", "cap_drop", "privileged", "seccomp", "no_new_privileges",
    "read_only", "memory", "cpus", "pids_limit", "userns", "volumes", "network", "env",
    "properties",
)  # fmt: skip


def refuse_unmapped(spec: ContainerSpec, runtime: str, mapped: Iterable[str]) -> None:
    """UnsupportedSpec for the first field that differs from its default and that the
    runtime's mapping does not handle: a field is mapped or refused, never dropped."""
    from .errors import UnsupportedSpec

    handled = ALWAYS_MAPPED | set(mapped)
    for name in spec.non_default_fields():
        if name not in handled:
            raise UnsupportedSpec(name, runtime, f"the {runtime} adapter does not map {name}")


def refuse_portable_profile(spec: ContainerSpec, runtime: str) -> None:
    """UnsupportedSpec on every runtime but ``portable`` for a profile other than default."""
    from .errors import UnsupportedSpec

    if spec.portable_profile != "default":
        raise UnsupportedSpec(
            "portable_profile", runtime, "a systemd portable service profile: use portable"
        )


SPEC_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ContainerSpec) if f.name != "origin"
)  # what markers, policies and containersec_start() accept
