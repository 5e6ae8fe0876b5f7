"""A Kubernetes workload's container -> ContainerSpec (pure apart from reading the file).

Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob, in multi-document
files. Kubernetes' defaults are kept, not Docker's: no seccompProfile means Unconfined
(the kubelet's default unless its SeccompDefault is on), allowPrivilegeEscalation
defaults to true, a pod network runs as network none (still a private namespace).
Container-level securityContext fields override the pod-level ones. runAsNonRoot has no
spec field: the kubelet's refusal is not imitated, the uid is observed (``non_root``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..spec import Origin
from .common import Loaded, boolean, build, integer, words
from .yamlfile import Ctx, LineDict, check_keys, load_all, mapping, str_list

KUBELET_SECCOMP_ROOT = "/var/lib/kubelet/seccomp"
# kind -> path of keys to its pod template's spec
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
POD_MAPPED = ("containers", "initContainers", "securityContext", "hostPID", "hostIPC",
              "hostNetwork", "hostUsers", "volumes")  # fmt: skip
POD_IGNORED = (
    "restartPolicy", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy",
    "dnsConfig", "nodeSelector", "nodeName", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "affinity", "tolerations", "schedulerName",
    "priorityClassName", "priority", "preemptionPolicy", "topologySpreadConstraints",
    "imagePullSecrets", "hostname", "subdomain", "setHostnameAsFQDN", "hostAliases",
    "enableServiceLinks", "readinessGates", "runtimeClassName", "overhead", "os",
    "shareProcessNamespace", "schedulingGates", "resourceClaims",
)  # fmt: skip
POD_SC = ("runAsUser", "runAsGroup", "runAsNonRoot", "supplementalGroups", "fsGroup",
          "seccompProfile", "appArmorProfile", "seLinuxOptions", "sysctls")  # fmt: skip
POD_SC_IGNORED = ("fsGroupChangePolicy", "windowsOptions", "supplementalGroupsPolicy",
                  "seLinuxChangePolicy")  # fmt: skip
CONTAINER_MAPPED = ("name", "image", "command", "args", "env", "resources", "securityContext",
                    "volumeMounts")  # fmt: skip
CONTAINER_IGNORED = (
    "ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "imagePullPolicy",
    "terminationMessagePath", "terminationMessagePolicy", "workingDir", "stdin", "stdinOnce",
    "tty", "resizePolicy", "restartPolicy",
)  # fmt: skip
CONTAINER_SC = ("runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
                "allowPrivilegeEscalation", "privileged", "capabilities", "seccompProfile",
                "appArmorProfile", "seLinuxOptions", "procMount")  # fmt: skip
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity(ctx: Ctx, value: Any, cpu: bool) -> float:
    """A Kubernetes quantity: ``128Mi``, ``1G``, ``500m`` (milli), ``0.5``."""
    m = _QUANTITY.match(str(value).strip())
    if not m or isinstance(value, bool):
        raise ctx.error(f"expected a quantity like {'500m or 1' if cpu else '128Mi or 1G'}")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "m":
        return number / 1000
    factor = _BINARY.get(unit) or _DECIMAL.get(unit)
    if factor is None:
        raise ctx.error(f"unknown quantity suffix {unit!r}")
    return number * factor


def pod_spec_of(ctx: Ctx, doc: LineDict) -> tuple[Ctx, LineDict, LineDict] | None:
    """(context, pod spec, pod metadata) of a workload document; None for other kinds."""
    kind = doc.get("kind")
    if kind not in POD_SPEC_PATHS:
        return None
    node: Any = doc
    meta: Any = doc.get("metadata") or LineDict()
    c = ctx
    for key in POD_SPEC_PATHS[kind]:
        node = mapping(c, node)
        if key == "spec" and "template" not in node and isinstance(node.get("metadata"), dict):
            meta = node["metadata"]
        c = c.at(node, key)
        if key == "template":
            meta = mapping(c, node.get(key)).get("metadata") or meta
        node = node.get(key)
    return c, mapping(c, node), meta if isinstance(meta, LineDict) else LineDict(meta)


def load(path: str | Path, container: str | None = None) -> Loaded:
    """The ContainerSpec of ``container`` (optional when the file has only one)."""
    file = Path(path).resolve()
    top = Ctx(str(path), None, "")
    found: list[tuple[int, str, Ctx, LineDict, LineDict, Ctx, LineDict]] = []
    names: list[str] = []
    for n, doc in enumerate(load_all(file)):
        dctx = Ctx(str(path), getattr(doc, "line", None), f"document {n + 1}")
        if not isinstance(doc, LineDict):
            raise dctx.error("expected a Kubernetes object (a mapping)")
        located = pod_spec_of(dctx, doc)
        if located is None:
            continue
        pctx, pod, meta = located
        for key in ("containers", "initContainers"):
            items = pod.get(key) or []
            if not isinstance(items, list):
                raise pctx.at(pod, key).error("expected a list of containers")
            for i, c in enumerate(items):
                cctx = pctx.at(pod, key).at(items, i)
                c = mapping(cctx, c)
                name = str(c.get("name", ""))
                names.append(f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}:{name}")
                if container is None or name == container:
                    found.append((n, name, pctx, pod, meta, cctx, c))
    if not found:
        what = f"no container {container!r}" if container else "no workload"
        raise top.error(f"{what} (containers: {', '.join(names) or 'none'})")
    if len(found) > 1:
        why = "several containers" if container is None else f"{container!r} in several workloads"
        raise top.error(f"{why}: name one of {', '.join(names)}")
    n, name, pctx, pod, meta, cctx, c = found[0]
    reader = _Container(pctx, pod, meta, cctx, c)
    spec = reader.spec(Origin("kube", str(file), name, n))
    return Loaded(spec, tuple(reader.notes))


class _Container:
    def __init__(self, pctx: Ctx, pod: LineDict, meta: LineDict, cctx: Ctx, c: LineDict) -> None:
        self.pctx, self.pod, self.meta, self.cctx, self.c = pctx, pod, meta, cctx, c
        self.fields: dict[str, Any] = {}
        self.lines: dict[str, Ctx] = {}
        self.notes: list[str] = []

    def set(self, field: str, value: Any, ctx: Ctx) -> None:
        self.fields[field] = value
        self.lines[field] = ctx

    def spec(self, origin: Origin) -> Any:
        pod, c, pctx, cctx = self.pod, self.c, self.pctx, self.cctx
        check_keys(pctx, pod, POD_MAPPED, POD_IGNORED)
        check_keys(cctx, c, CONTAINER_MAPPED, CONTAINER_IGNORED)
        if "image" not in c:
            raise cctx.error("the container names no image")
        self.set("image", str(c["image"]), cctx.at(c, "image"))
        if "command" in c:  # command replaces the entrypoint, args the image's CMD
            where = cctx.at(c, "command")
            self.set("entrypoint", words(where, c["command"]), where)
        if "args" in c:
            self.set("command", words(cctx.at(c, "args"), c["args"]), cctx.at(c, "args"))
        self.security()
        self.host_namespaces()
        self.resources()
        self.env()
        self.volume_mounts()
        self.fields["origin"] = replace(origin, line=self.lines["image"].line or 0)
        return build(cctx, self.fields, self.lines)

    def security(self) -> None:
        pctx = self.pctx.at(self.pod, "securityContext")
        cctx = self.cctx.at(self.c, "securityContext")
        psc = mapping(pctx, self.pod.get("securityContext") or LineDict())
        csc = mapping(cctx, self.c.get("securityContext") or LineDict())
        check_keys(pctx, psc, POD_SC, POD_SC_IGNORED)
        check_keys(cctx, csc, CONTAINER_SC, ("windowsOptions",))

        def pick(key: str) -> tuple[Any, Ctx] | None:  # the container's value wins
            if key in csc:
                return csc[key], cctx.at(csc, key)
            if key in psc:
                return psc[key], pctx.at(psc, key)
            return None

        uid, gid = pick("runAsUser"), pick("runAsGroup")
        if gid is not None and uid is None:
            raise gid[1].unsupported("runAsGroup without runAsUser (the image's uid is unknown)")
        if uid is not None:
            user = str(integer(uid[1], uid[0]))
            if gid is not None:
                user += f":{integer(gid[1], gid[0])}"
            self.set("user", user, uid[1])
        if (nonroot := pick("runAsNonRoot")) is not None and boolean(nonroot[1], nonroot[0]):
            self.notes.append(
                f"{nonroot[1].path}:{nonroot[1].line}: runAsNonRoot: the kubelet would refuse "
                "to start a container whose user is root; containersec starts it and observes "
                "the uid (expect.non_root / the restricted profile give the verdict)"
            )
        groups = [str(integer(pctx, g)) for g in psc.get("supplementalGroups") or []]
        if "fsGroup" in psc:  # the kubelet adds fsGroup to the supplementary groups
            groups.append(str(integer(pctx.at(psc, "fsGroup"), psc["fsGroup"])))
        if groups:
            self.set("group_add", groups, pctx)
        if "sysctls" in psc:
            items = psc["sysctls"]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise pctx.at(psc, "sysctls").error("expected a list of {name, value}")
            pairs = [(str(i.get("name")), str(i.get("value"))) for i in items]
            self.set("sysctls", pairs, pctx.at(psc, "sysctls"))
        for key, field in (("readOnlyRootFilesystem", "read_only"), ("privileged", "privileged")):
            if key in csc:
                self.set(field, boolean(cctx.at(csc, key), csc[key]), cctx.at(csc, key))
        if "allowPrivilegeEscalation" in csc:  # default true: no_new_privs stays off
            c = cctx.at(csc, "allowPrivilegeEscalation")
            self.set("no_new_privileges", not boolean(c, csc["allowPrivilegeEscalation"]), c)
        if "capabilities" in csc:
            c = cctx.at(csc, "capabilities")
            capabilities = mapping(c, csc["capabilities"])
            check_keys(c, capabilities, ("add", "drop"))
            for key in ("add", "drop"):
                if key in capabilities:
                    self.set(f"cap_{key}", str_list(c.at(capabilities, key), capabilities[key]), c)
        if "procMount" in csc:
            c, value = cctx.at(csc, "procMount"), csc["procMount"]
            if value not in ("Default", "Unmasked"):
                raise c.error("expected Default or Unmasked")
            if value == "Unmasked":
                self.set("unmask", True, c)
        self.seccomp(pick("seccompProfile"))
        self.apparmor(pick("appArmorProfile"))
        if (se := pick("seLinuxOptions")) is not None:
            opts = mapping(se[1], se[0])
            check_keys(se[1], opts, ("user", "role", "type", "level"))
            self.set("label", [f"{k}:{v}" for k, v in opts.items()], se[1])

    def seccomp(self, found: tuple[Any, Ctx] | None) -> None:
        if found is None:  # Kubernetes' default: Unconfined (unless the kubelet's
            self.set("seccomp", "unconfined", self.cctx)  # SeccompDefault is on)
            self.notes.append(
                f"{self.cctx.path}: {self.cctx.key}: no seccompProfile: Kubernetes runs it "
                "Unconfined unless the kubelet's SeccompDefault is on; mapped to unconfined"
            )
            return
        value, c = found
        profile = mapping(c, value)
        check_keys(c, profile, ("type", "localhostProfile"))
        kind = profile.get("type")
        if kind == "RuntimeDefault":
            self.set("seccomp", "default", c)
        elif kind == "Unconfined":
            self.set("seccomp", "unconfined", c)
        elif kind == "Localhost" and isinstance(profile.get("localhostProfile"), str):
            self.set("seccomp", f"{KUBELET_SECCOMP_ROOT}/{profile['localhostProfile']}", c)
        else:
            raise c.error("type must be RuntimeDefault, Unconfined or Localhost (with a profile)")

    def apparmor(self, found: tuple[Any, Ctx] | None) -> None:
        name = str(self.c.get("name"))
        legacy = (self.meta.get("annotations") or {}).get(
            f"container.apparmor.security.beta.kubernetes.io/{name}"
        )
        if found is None and legacy is None:
            return  # RuntimeDefault: the engine's default profile
        if found is not None:
            value, c = found
            profile = mapping(c, value)
            check_keys(c, profile, ("type", "localhostProfile"))
            kind, local = profile.get("type"), profile.get("localhostProfile")
        else:
            c = self.pctx
            kind = {"runtime/default": "RuntimeDefault", "unconfined": "Unconfined"}.get(
                str(legacy), "Localhost"
            )
            local = str(legacy).removeprefix("localhost/")
        if kind == "Unconfined":
            self.set("apparmor", "unconfined", c)
        elif kind == "Localhost" and local:
            self.set("apparmor", local, c)
        elif kind != "RuntimeDefault":
            raise c.error("type must be RuntimeDefault, Unconfined or Localhost (with a profile)")

    def host_namespaces(self) -> None:
        pod, pctx = self.pod, self.pctx
        for key, field in (("hostPID", "pid"), ("hostIPC", "ipc")):
            if key in pod and boolean(pctx.at(pod, key), pod[key]):
                self.set(field, "host", pctx.at(pod, key))
        host_net = "hostNetwork" in pod and boolean(pctx.at(pod, "hostNetwork"), pod["hostNetwork"])
        if host_net:  # the pod shares the host's UTS namespace with it
            self.set("network", "host", pctx.at(pod, "hostNetwork"))
            self.set("uts", "host", pctx.at(pod, "hostNetwork"))
        else:
            self.set("network", "none", pctx)
        if "hostUsers" in pod and not boolean(pctx.at(pod, "hostUsers"), pod["hostUsers"]):
            self.set("userns", "auto", pctx.at(pod, "hostUsers"))

    def resources(self) -> None:
        if "resources" not in self.c:
            return
        rctx = self.cctx.at(self.c, "resources")
        res = mapping(rctx, self.c["resources"])
        check_keys(rctx, res, ("limits",), ("requests", "claims"))
        if "limits" not in res:
            return
        lctx = rctx.at(res, "limits")
        lim = mapping(lctx, res["limits"])
        check_keys(lctx, lim, ("cpu", "memory"), ("ephemeral-storage",))
        if "memory" in lim:
            c = lctx.at(lim, "memory")
            self.set("memory", int(quantity(c, lim["memory"], cpu=False)), c)
        if "cpu" in lim:
            c = lctx.at(lim, "cpu")
            self.set("cpus", quantity(c, lim["cpu"], cpu=True), c)

    def env(self) -> None:
        items = self.c.get("env") or []
        ectx = self.cctx.at(self.c, "env")
        out: dict[str, str] = {}
        for i, e in enumerate(items):
            c = ectx.at(items, i)
            e = mapping(c, e)
            check_keys(c, e, ("name", "value"))
            out[str(e["name"])] = str(e.get("value", ""))
        if out:
            self.set("env", out, ectx)

    def volume_mounts(self) -> None:
        mounts = self.c.get("volumeMounts") or []
        vctx = self.cctx.at(self.c, "volumeMounts")
        volumes = {str(v.get("name")): (i, v) for i, v in enumerate(self.pod.get("volumes") or [])}
        binds: list[str] = []
        tmpfs: list[str] = []
        for i, m in enumerate(mounts):
            c = vctx.at(mounts, i)
            m = mapping(c, m)
            check_keys(c, m, ("name", "mountPath", "readOnly"))
            name, target = str(m.get("name")), str(m.get("mountPath"))
            ro = "readOnly" in m and boolean(c.at(m, "readOnly"), m["readOnly"])
            if name not in volumes:
                raise c.error(f"no pod volume {name!r}")
            n, vol = volumes[name]
            vc = self.pctx.at(self.pod, "volumes").at(self.pod["volumes"], n)
            vol = mapping(vc, vol)
            kinds = [k for k in vol if k != "name"]
            kind = kinds[0] if len(kinds) == 1 else None
            if kind == "hostPath":
                path = mapping(vc.at(vol, kind), vol[kind]).get("path")
                binds.append(f"{path}:{target}{':ro' if ro else ''}")
            elif kind == "emptyDir":
                size = (vol[kind] or {}).get("sizeLimit")
                opts = [f"size={int(quantity(vc, size, cpu=False))}"] if size else []
                opts += ["ro"] if ro else []
                tmpfs.append(target + (":" + ",".join(opts) if opts else ""))
            elif kind in ("configMap", "secret", "projected", "downwardAPI"):
                tmpfs.append(f"{target}:ro")  # read-only files from the cluster: here empty
                self.notes.append(
                    f"{vc.path}:{vc.line}: {kind} volume {name!r} at {target}: an empty "
                    "read-only tmpfs (its files come from the cluster)"
                )
            else:
                raise vc.unsupported(f"volume {name!r} of type {kind!r}")
        if binds:
            self.set("volumes", binds, vctx)
        if tmpfs:
            self.set("tmpfs", tmpfs, vctx)
