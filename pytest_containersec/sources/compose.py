"""A Compose file's service -> ContainerSpec (pure apart from reading the file and,
for interpolation, ``.env`` next to it and the process environment).

Follows the compose-spec: short and long syntaxes, ``${VAR:-default}`` interpolation,
``deploy.resources.limits``, relative bind sources resolved against the file's folder.
Every key of the service is mapped, or deliberately ignored because it does not change
the container's confinement (``IGNORED``), or an error naming file, line and key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..spec import Origin, Tmpfs, Volume
from .common import Loaded, boolean, build, integer, words
from .yamlfile import Ctx, LineDict, check_keys, interpolate, load_all, mapping, str_list

TOP_LEVEL = ("version", "name", "services", "networks", "volumes", "configs", "secrets",
             "include")  # fmt: skip
MAPPED = (
    "image", "command", "entrypoint", "user", "cap_add", "cap_drop", "privileged",
    "read_only", "security_opt", "mem_limit", "memswap_limit", "pids_limit", "cpus",
    "cpu_quota", "cpu_period", "deploy", "userns_mode", "volumes", "tmpfs", "network_mode",
    "networks", "group_add", "devices", "ulimits", "sysctls", "pid", "ipc", "uts",
    "environment", "env_file", "build",
)  # fmt: skip
# Keys that do not change what confines the container (names, ordering, health checks,
# published ports: runs here have no network but host or none), listed in the README.
IGNORED = (
    "container_name", "depends_on", "expose", "ports", "healthcheck", "labels", "logging",
    "restart", "stop_grace_period", "stop_signal", "hostname", "domainname", "working_dir",
    "stdin_open", "tty", "profiles", "extra_hosts", "dns", "dns_search", "dns_opt", "links",
    "external_links", "scale", "pull_policy", "platform", "annotations", "attach", "develop",
    "mem_reservation", "cpu_shares", "mac_address", "init_path",
)  # fmt: skip
DEPLOY_IGNORED = ("mode", "replicas", "labels", "placement", "restart_policy", "rollback_config",
                  "update_config", "endpoint_mode")  # fmt: skip


def read_env_file(path: Path, ctx: Ctx) -> dict[str, str]:
    """A ``.env``/``env_file``: ``KEY=VALUE`` lines, ``#`` comments, optional quotes."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ctx.error(f"{path}: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise Ctx(str(path), n, "env_file").error(f"expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def load(path: str | Path, service: str, environ: Mapping[str, str] | None = None) -> Loaded:
    """The ContainerSpec of ``service`` in the compose file ``path``."""
    file = Path(path).resolve()
    top = Ctx(str(path), None, "")
    env = dict(os.environ if environ is None else environ)
    dotenv = file.parent / ".env"
    if dotenv.is_file():  # the process environment wins over .env, as in compose
        env = {**read_env_file(dotenv, top), **env}
    docs = load_all(file, lambda text, line: interpolate(text, env, Ctx(str(path), line, "$")))
    if len(docs) != 1:
        raise top.error("expected one YAML document")
    root = mapping(Ctx(str(path), 1, "(top level)"), docs[0])
    check_keys(top, root, TOP_LEVEL, extensions=True)
    services = mapping(top.at(root, "services"), root.get("services"))
    if service not in services:
        raise top.at(root, "services").error(
            f"no service {service!r} (services: {', '.join(map(str, services)) or 'none'})"
        )
    ctx = top.at(root, "services").at(services, service)
    svc = mapping(ctx, services[service])
    reader = _Service(ctx, svc, file.parent, env)
    return Loaded(reader.spec(Origin("compose", str(file), service)), tuple(reader.notes))


class _Service:
    def __init__(self, ctx: Ctx, svc: LineDict, base: Path, env: dict[str, str]) -> None:
        self.ctx, self.svc, self.base, self.env = ctx, svc, base, env
        self.fields: dict[str, Any] = {}
        self.lines: dict[str, Ctx] = {}
        self.notes: list[str] = []

    def set(self, field: str, value: Any, key: str) -> None:
        self.fields[field] = value
        self.lines[field] = self.ctx.at(self.svc, key)

    def at(self, key: str) -> Ctx:
        return self.ctx.at(self.svc, key)

    def spec(self, origin: Origin) -> Any:
        svc = self.svc
        check_keys(self.ctx, svc, MAPPED, IGNORED, extensions=True)
        if "image" not in svc:
            why = "it only builds one" if "build" in svc else "it has none"
            raise self.ctx.error(f"the service names no image ({why}); set image: to a local one")
        self.set("image", str(svc["image"]), "image")
        if "entrypoint" in svc:
            self.set("entrypoint", words(self.at("entrypoint"), svc["entrypoint"]), "entrypoint")
        if "command" in svc:
            self.set("command", words(self.at("command"), svc["command"]), "command")
        if "user" in svc:
            self.set("user", str(svc["user"]), "user")
        for key in ("cap_add", "cap_drop", "group_add"):
            if key in svc:
                self.set(key, str_list(self.at(key), svc[key]), key)
        for key in ("privileged", "read_only"):
            if key in svc:
                self.set(key, boolean(self.at(key), svc[key]), key)
        if "security_opt" in svc:
            self.security_opt(svc["security_opt"])
        self.limits()
        self.namespaces()
        self.mounts()
        for key in ("devices", "ulimits", "sysctls"):
            if key in svc:
                self.set(key, self.plain(key), key)
        self.environment()
        if "build" in svc:
            where = self.at("build")
            self.notes.append(f"{where.key}: ignored; the local image {svc['image']} runs")
        self.fields["origin"] = replace(origin, line=self.lines["image"].line or 0)
        return build(self.ctx, self.fields, self.lines)

    def plain(self, key: str) -> Any:
        value = self.svc[key]
        if key == "devices":
            out = []
            for i, d in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(d, Mapping):
                    c = self.at(key).at(value, i)
                    check_keys(c, LineDict(d) if not isinstance(d, LineDict) else d,
                               ("source", "target", "permissions"))  # fmt: skip
                    target = d.get("target", d["source"])
                    d = f"{d['source']}:{target}:{d.get('permissions', 'rwm')}"
                if isinstance(d, str) and "=" in d:
                    raise self.at(key).unsupported(f"CDI device {d!r}")
                out.append(d)
            return out
        if key == "ulimits" and isinstance(value, Mapping):
            return {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
        return value

    def security_opt(self, value: Any) -> None:
        ctx = self.at("security_opt")
        labels: list[str] = []
        for i, opt in enumerate(str_list(ctx, value)):
            c = ctx.at(value, i) if isinstance(value, list) else ctx
            key, sep, arg = opt.replace("=", ":", 1).partition(":")
            if key == "no-new-privileges":
                self.set("no_new_privileges", not sep or boolean(c, arg), "security_opt")
            elif key == "seccomp" and arg:
                seccomp = arg
                if arg not in ("unconfined", "default"):
                    seccomp = str((self.base / arg).resolve())
                self.set("seccomp", seccomp, "security_opt")
            elif key == "apparmor" and arg:
                self.set("apparmor", arg, "security_opt")
            elif key == "label" and arg:
                labels.append(arg.replace("=", ":", 1))
            elif key == "systempaths" and arg == "unconfined":
                self.set("unmask", True, "security_opt")
            else:
                raise c.unsupported(f"security_opt {opt!r}")
        if labels:
            self.set("label", labels, "security_opt")

    def limits(self) -> None:
        svc = self.svc
        if "mem_limit" in svc:
            self.set("memory", svc["mem_limit"], "mem_limit")
        if "memswap_limit" in svc:
            raise self.at("memswap_limit").unsupported("swap limits have no spec field")
        if "pids_limit" in svc:
            n = integer(self.at("pids_limit"), svc["pids_limit"], signed=True)
            if n > 0:  # -1 and 0: unlimited
                self.set("pids_limit", n, "pids_limit")
        if "cpus" in svc:
            self.set("cpus", svc["cpus"], "cpus")
        if "cpu_quota" in svc:
            quota = integer(self.at("cpu_quota"), svc["cpu_quota"], signed=True)
            period = integer(self.at("cpu_period"), svc.get("cpu_period", 100000))
            if period == 0:
                raise self.at("cpu_period").error("expected a positive number of microseconds")
            self.set("cpus", quota / period, "cpu_quota")
        if "deploy" not in svc:
            return
        dctx = self.at("deploy")
        deploy = mapping(dctx, svc["deploy"])
        check_keys(dctx, deploy, ("resources",), DEPLOY_IGNORED, extensions=True)
        if "resources" not in deploy:
            return
        rctx = dctx.at(deploy, "resources")
        res = mapping(rctx, deploy["resources"])
        check_keys(rctx, res, ("limits",), ("reservations",), extensions=True)
        if "limits" not in res:
            return
        lctx = rctx.at(res, "limits")
        lim = mapping(lctx, res["limits"])
        check_keys(lctx, lim, ("cpus", "memory", "pids"), extensions=True)
        for key, field in (("cpus", "cpus"), ("memory", "memory"), ("pids", "pids_limit")):
            if key in lim:  # deploy limits win over the legacy keys, as in docker compose
                value = lim[key]
                if key == "pids":
                    value = integer(lctx.at(lim, key), value, signed=True)
                self.fields[field] = value
                self.lines[field] = lctx.at(lim, key)

    def namespaces(self) -> None:
        svc = self.svc
        for key in ("pid", "ipc", "uts"):
            if key in svc:
                value = str(svc[key])
                if key == "ipc" and value == "shareable":  # a private namespace others may join
                    value = "private"
                if value not in ("host", "private"):
                    raise self.at(key).unsupported(f"{key}: {value!r} (host or private only)")
                self.set(key, value, key)
        if "userns_mode" in svc:
            if svc["userns_mode"] != "host":
                raise self.at("userns_mode").unsupported(f"userns_mode {svc['userns_mode']!r}")
            self.set("userns", "host", "userns_mode")
        mode = svc.get("network_mode")
        if mode is None or mode in ("none", "bridge", "default"):
            self.set("network", "none", "network_mode" if mode else "image")
            if mode in ("bridge", "default") or "networks" in svc:
                self.notes.append(
                    f"{self.ctx.key}: its networks run as network none (a private network "
                    "namespace; containersec attaches no container to a network)"
                )
        elif mode == "host":
            self.set("network", "host", "network_mode")
        else:
            raise self.at("network_mode").unsupported(f"network_mode {mode!r}")

    def mounts(self) -> None:
        svc = self.svc
        vols: list[Volume] = []
        tmpfs: list[str] = []
        if "tmpfs" in svc:
            tmpfs += str_list(self.at("tmpfs"), svc["tmpfs"])
        raw = svc.get("volumes") or []
        vctx = self.at("volumes")
        if not isinstance(raw, list):
            raise vctx.error("expected a list")
        for i, v in enumerate(raw):
            c = vctx.at(raw, i)
            if isinstance(v, str):
                self.short_volume(c, v, vols)
            elif isinstance(v, LineDict):
                self.long_volume(c, v, vols, tmpfs)
            else:
                raise c.error("expected SRC:DST[:MODE] or a mapping")
        if vols:
            self.set("volumes", vols, "volumes")
        if tmpfs:
            self.set("tmpfs", tmpfs, "tmpfs" if "tmpfs" in svc else "volumes")

    def source(self, c: Ctx, src: str) -> str:
        if src.startswith(("/", ".", "~")):
            return str(Path(os.path.expanduser(src)) if src.startswith("~") else self.base / src)
        raise c.unsupported(f"named volume {src!r} (engine volumes are not created; bind a path)")

    def short_volume(self, c: Ctx, text: str, out: list[Volume]) -> None:
        parts = text.split(":")
        if len(parts) == 1:
            raise c.unsupported(f"anonymous volume {text!r}")
        src, dst, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"
        opts = set(mode.split(","))
        if opts - {"ro", "rw", "z", "Z", "cached", "delegated", "consistent", "nocopy"}:
            raise c.unsupported(f"volume mode {mode!r}")
        src = os.path.normpath(self.source(c, src))
        out.append(Volume(src, dst, "ro" in opts))

    def long_volume(self, c: Ctx, v: LineDict, out: list[Volume], tmpfs: list[str]) -> None:
        check_keys(c, v, ("type", "source", "target", "read_only", "tmpfs", "bind"),
                   ("consistency",))  # fmt: skip
        kind, target = v.get("type"), v.get("target")
        if not isinstance(target, str):
            raise c.error("a volume needs a target")
        if kind == "tmpfs":
            t = v.get("tmpfs") or {}
            opts = [f"size={t['size']}"] if "size" in t else []
            if "mode" in t:  # an int (YAML octal) or a string like 1777 or 0o1777
                mode = t["mode"]
                opts.append(f"mode={mode:o}" if isinstance(mode, int) else
                            f"mode={str(mode).removeprefix('0o')}")  # fmt: skip
            if v.get("read_only"):
                opts.append("ro")
            tmpfs.append(str(Tmpfs.parse(target + (":" + ",".join(opts) if opts else ""))))
        elif kind == "bind":
            bind = v.get("bind") or {}
            if set(bind) - {"create_host_path", "selinux"}:
                raise c.at(v, "bind").unsupported(f"bind options {sorted(bind)}")
            src = os.path.normpath(self.source(c, str(v.get("source", ""))))
            out.append(Volume(src, target, bool(v.get("read_only"))))
        else:
            raise c.at(v, "type").unsupported(f"volume type {kind!r} (bind and tmpfs only)")

    def environment(self) -> None:
        svc = self.svc
        env: dict[str, str] = {}
        for i, f in enumerate(str_list(self.at("env_file"), svc.get("env_file") or [])):
            env.update(read_env_file(self.base / f, self.at("env_file").at(svc["env_file"], i)))
        raw = svc.get("environment") or {}
        ctx = self.at("environment")
        items: list[tuple[str, Any]]
        if isinstance(raw, Mapping):
            items = list(raw.items())
        elif isinstance(raw, list):
            items = [(e.partition("=")[0], e.partition("=")[2] if "=" in e else None)
                     for e in str_list(ctx, raw)]  # fmt: skip
        else:
            raise ctx.error("expected a mapping or a list of KEY=VALUE")
        for key, value in items:
            if value is None:  # KEY alone: from the environment, or left out
                if key in self.env:
                    env[str(key)] = self.env[key]
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            env[str(key)] = text
        if env:
            self.set("env", env, "environment" if "environment" in svc else "env_file")
