"""Value types and validators of the ContainerSpec fields that carry structure: devices,
tmpfs mounts, ulimits, sysctls, supplementary groups, namespace modes, id maps, LSM
options. Pure; every error is a SpecError naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import SpecError

NAMESPACE_MODES = ("private", "host")
# setrlimit(2) resources by docker's names (``docker run --ulimit NAME=SOFT[:HARD]``)
ULIMIT_NAMES = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
    "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
UNLIMITED = -1  # RLIM_INFINITY, as docker spells it ("unlimited" or -1)
TMPFS_FLAGS = ("ro", "rw", "noexec", "exec", "nosuid", "suid", "nodev", "dev")
TMPFS_KEYS = ("size", "mode")
LABEL_KEYS = ("user", "role", "type", "level")
_GROUP = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$|^\d+$")
_SYSCTL = re.compile(r"^[a-z0-9_]+(?:[./][a-z0-9_*-]+)+$")
_MAP = re.compile(r"^\d+:\d+:\d+$")
_APPARMOR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,/-]*$")
_SIZE = re.compile(r"^\d+[kmgKMG%]?$")
_MODE = re.compile(r"^[0-7]{3,4}$")


def _abs(field: str, path: str, text: object) -> str:
    if not path.startswith("/") or "\0" in path or "," in path:
        raise SpecError(field, text, "paths must be absolute")
    return path


@dataclass(frozen=True)
class Device:
    """A host device made visible inside: ``HOST[:CONTAINER][:PERMISSIONS]`` (rwm)."""

    host: str
    container: str
    permissions: str = "rwm"

    @classmethod
    def parse(cls, text: object) -> Device:
        """Parse ``HOST[:CONTAINER][:PERMISSIONS]`` (a Device passes through); the container
        path defaults to the host's, permissions to ``rwm`` and are kept in ``rwm`` order."""
        if isinstance(text, Device):
            return text
        if not isinstance(text, str):
            raise SpecError("devices", text, "expected /dev/HOST[:/dev/CONTAINER][:rwm]")
        parts = text.split(":")
        if len(parts) > 3 or not parts[0]:
            raise SpecError("devices", text, "expected /dev/HOST[:/dev/CONTAINER][:rwm]")
        host = _abs("devices", parts[0], text)
        container, perms = host, "rwm"
        rest = parts[1:]
        if rest and not rest[-1].startswith("/"):
            perms = rest.pop()
        if rest:
            container = _abs("devices", rest[0], text)
        if (
            rest[1:]
            or not perms
            or any(c not in "rwm" for c in perms)
            or len(set(perms)) < len(perms)
        ):
            raise SpecError("devices", text, "permissions are a combination of r, w and m")
        return cls(host, container, "".join(c for c in "rwm" if c in perms))

    def __str__(self) -> str:
        return f"{self.host}:{self.container}:{self.permissions}"


@dataclass(frozen=True)
class Tmpfs:
    """A tmpfs mount: ``PATH[:OPTIONS]``, options ``size=64m``, ``mode=1777``, ``ro``,
    ``noexec``/``exec``, ``nosuid``/``suid``, ``nodev``/``dev`` (docker's ``--tmpfs``)."""

    target: str
    options: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: object) -> Tmpfs:
        """Parse ``PATH[:OPTION,...]`` (a Tmpfs passes through); sizes are lower-cased, an
        unknown option is a SpecError."""
        if isinstance(text, Tmpfs):
            return text
        if not isinstance(text, str):
            raise SpecError("tmpfs", text, "expected PATH[:OPTION,...]")
        target, _, opts = text.partition(":")
        _abs("tmpfs", target, text)
        options: list[str] = []
        for opt in (o.strip() for o in opts.split(",") if o.strip()):
            key, sep, value = opt.partition("=")
            if sep and key == "size" and _SIZE.match(value):
                options.append(f"size={value.lower()}")
            elif sep and key == "mode" and _MODE.match(value):
                options.append(f"mode={value}")
            elif not sep and opt in TMPFS_FLAGS:
                options.append(opt)
            else:
                raise SpecError(
                    "tmpfs", text, f"option {opt!r}: expected size=N[kmg], mode=OCTAL or one of "
                    + ", ".join(TMPFS_FLAGS),
                )  # fmt: skip
        return cls(target, tuple(options))

    def option(self, key: str) -> str | None:
        """The value of option ``key`` (``size``, ``mode``), or None when it is not set."""
        for o in self.options:
            if o.startswith(key + "="):
                return o.partition("=")[2]
        return None

    @property
    def flags(self) -> tuple[str, ...]:
        """The options without a value (``ro``, ``noexec``, ...), in the order given."""
        return tuple(o for o in self.options if "=" not in o)

    def __str__(self) -> str:
        return self.target + (":" + ",".join(self.options) if self.options else "")


@dataclass(frozen=True)
class Ulimit:
    """One resource limit: soft and hard values, -1 for unlimited."""

    name: str
    soft: int
    hard: int

    def __str__(self) -> str:
        return f"{self.name}={self.soft}:{self.hard}"


def _limit(text: object, value: object) -> int:
    if isinstance(value, bool):
        raise SpecError("ulimits", text, "expected a whole number or unlimited")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip() in ("unlimited", "infinity", "-1"):
        return UNLIMITED
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        raise SpecError("ulimits", text, "expected a whole number or unlimited")
    if n < UNLIMITED:
        raise SpecError("ulimits", text, "must not be negative")
    return n


def ulimit(name: str, value: object) -> Ulimit:
    """``("nofile", "1024:2048")``, ``("nofile", 1024)``, ``("nofile", (1024, 2048))``
    or ``("nofile", {"soft": 1024, "hard": 2048})`` -> Ulimit."""
    key = name.strip().lower().removeprefix("rlimit_")
    if key not in ULIMIT_NAMES:
        raise SpecError("ulimits", name, f"unknown resource; known: {', '.join(ULIMIT_NAMES)}")
    if isinstance(value, Mapping):
        if set(value) != {"soft", "hard"}:
            raise SpecError("ulimits", {name: value}, "expected {soft: N, hard: N}")
        soft, hard = _limit(name, value["soft"]), _limit(name, value["hard"])
    elif isinstance(value, tuple | list):
        if len(value) != 2:
            raise SpecError("ulimits", {name: value}, "expected (soft, hard)")
        soft, hard = _limit(name, value[0]), _limit(name, value[1])
    elif isinstance(value, str) and ":" in value:
        a, _, b = value.partition(":")
        soft, hard = _limit(name, a), _limit(name, b)
    else:
        soft = hard = _limit(name, value)
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        raise SpecError("ulimits", f"{key}={value}", "the soft limit exceeds the hard limit")
    return Ulimit(key, soft, hard)


def ulimits(value: object) -> tuple[Ulimit, ...]:
    """A mapping ``{name: limit}`` or a list of ``NAME=SOFT[:HARD]`` / Ulimit, sorted."""
    out: dict[str, Ulimit] = {}
    items: Iterable[object]
    if isinstance(value, Mapping):
        items = [ulimit(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        items = [value]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise SpecError("ulimits", value, "expected {name: SOFT[:HARD]} or NAME=SOFT[:HARD]")
    for item in items:
        if isinstance(item, str):
            name, sep, limit = item.partition("=")
            if not sep:
                raise SpecError("ulimits", item, "expected NAME=SOFT[:HARD]")
            item = ulimit(name, limit)
        if not isinstance(item, Ulimit):
            raise SpecError("ulimits", item, "expected NAME=SOFT[:HARD]")
        if item.name in out:
            raise SpecError("ulimits", item.name, "given twice")
        out[item.name] = item
    return tuple(out[k] for k in sorted(out))


def sysctls(value: object) -> tuple[tuple[str, str], ...]:
    """``{"net.ipv4.ip_forward": "1"}`` or ``["k=v"]`` -> sorted pairs (values as text)."""
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str) or not isinstance(value, Iterable):
        raise SpecError("sysctls", value, "expected {name: value} or a list of NAME=VALUE")
    else:
        pairs = []
        for item in value:
            if isinstance(item, str):
                k, sep, v = item.partition("=")
                if not sep:
                    raise SpecError("sysctls", item, "expected NAME=VALUE")
                pairs.append((k, v))
            elif isinstance(item, tuple | list) and len(item) == 2:
                pairs.append((str(item[0]), item[1]))
            else:
                raise SpecError("sysctls", item, "expected NAME=VALUE")
    out: dict[str, str] = {}
    for k, v in pairs:
        name = k.strip().replace("/", ".")
        if not _SYSCTL.match(name):
            raise SpecError("sysctls", k, "expected a name like net.ipv4.ip_forward")
        text = ("1" if v else "0") if isinstance(v, bool) else str(v)
        if any(c in text for c in "\n\r\0"):
            raise SpecError("sysctls", v, "a value must be one line")
        out[name] = text
    return tuple(sorted(out.items()))


def groups(value: object) -> tuple[str, ...]:
    """Supplementary groups: names or gids (as text), unique, in the given order."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str | int) else value
    if not isinstance(items, Iterable):
        raise SpecError("group_add", value, "expected a list of group names or gids")
    out: dict[str, None] = {}
    for g in items:
        if isinstance(g, bool) or not isinstance(g, str | int):
            raise SpecError("group_add", g, "expected a group name or gid")
        text = str(g).strip()
        if not _GROUP.match(text):
            raise SpecError("group_add", g, "expected a group name or gid")
        out[text] = None
    return tuple(out)


def namespace_mode(field: str, value: object) -> str:
    """``private`` (also for None) or ``host``; anything else is a SpecError naming ``field``."""
    if value is None:
        return "private"
    if value not in NAMESPACE_MODES:
        raise SpecError(field, value, "expected private or host")
    return str(value)


def id_maps(field: str, value: str) -> tuple[tuple[int, int, int], ...]:
    """``INSIDE:OUTSIDE:COUNT[,...]`` -> tuples (SpecError when malformed)."""
    out = []
    for m in str(value).split(","):
        if not _MAP.match(m.strip()):
            raise SpecError(field, value, "expected INSIDE:OUTSIDE:COUNT[,...]")
        a, b, c = (int(x) for x in m.strip().split(":"))
        if c <= 0:
            raise SpecError(field, value, "a range needs a positive COUNT")
        out.append((a, b, c))
    return tuple(out)


def apparmor(value: object) -> str | None:
    """An AppArmor profile name or ``unconfined``, unchanged; None stays None (the engine's
    default)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _APPARMOR.match(value):
        raise SpecError("apparmor", value, "expected unconfined or a profile name")
    return value


def label(value: object) -> tuple[str, ...]:
    """SELinux label options as docker's ``--security-opt label=``: ``disable``,
    ``nested``, or ``user:U``, ``role:R``, ``type:T``, ``level:L``."""
    items = [value] if isinstance(value, str) else value
    if items is None:
        return ()
    if not isinstance(items, Iterable):
        raise SpecError("label", value, "expected a list of label options")
    out: list[str] = []
    for item in items:
        text = str(item)
        key, sep, rest = text.partition(":")
        keyed = bool(sep and key in LABEL_KEYS and rest and " " not in rest)
        if text in ("disable", "nested") or keyed:
            out.append(text)
        else:
            raise SpecError("label", item, "expected disable, nested or user:/role:/type:/level:")
    return tuple(out)
