"""Deployment files -> ContainerSpec: compose, Kubernetes, quadlet and unit readers on the
fixtures under tests/data/deploy, and every kind of bad input naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_containersec import sources
from pytest_containersec.errors import SourceError
from pytest_containersec.sources import compose, kube, quadlet, unitfile
from pytest_containersec.sources.yamlfile import Ctx, interpolate
from pytest_containersec.spec import Device, Tmpfs, Ulimit, Volume

DATA = Path(__file__).parent.parent / "data" / "deploy"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- compose -----------------------------------------------------------------------------


def test_compose_hardened_web_service() -> None:
    s = compose.load(DATA / "compose.yaml", "web", environ={}).spec
    assert s.image == "containersec/httpd"
    assert s.command == ("/bin/httpd", "-f", "-p", "8080", "-h", "/var/www")
    assert (s.user, s.cap_drop, s.no_new_privileges, s.read_only) == (
        "1000:1000",
        ("ALL",),
        True,
        True,
    )
    assert (s.memory, s.cpus, s.pids_limit) == (64 * 2**20, 0.5, 64)  # deploy.resources.limits
    assert s.tmpfs == (Tmpfs("/tmp", ("size=16m", "mode=1777")),)
    assert s.ulimits == (Ulimit("nofile", 1024, 2048),)
    assert dict(s.env) == {"APP_ENV": "production", "TZ": "UTC"}
    assert s.network == "none"
    assert s.origin is not None
    assert (s.origin.kind, s.origin.name, s.origin.line) == ("compose", "web", 12)


def test_compose_privileged_sidecar() -> None:
    s = compose.load(DATA / "compose.yaml", "cadvisor", environ={}).spec
    assert s.privileged
    assert s.devices == (Device("/dev/kmsg", "/dev/kmsg", "rwm"),)
    assert Volume("/", "/rootfs", True) in s.volumes
    assert Volume("/var/lib/docker", "/var/lib/docker", True) in s.volumes


def test_compose_interpolation_from_the_environment() -> None:
    s = compose.load(DATA / "compose.yaml", "web", environ={"WEB_IMAGE": "x/y", "APP_ENV": "ci"})
    assert s.spec.image == "x/y"
    assert dict(s.spec.env)["APP_ENV"] == "ci"


@pytest.mark.parametrize(
    ("text", "env", "out"),
    [
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A:+alt}", {"A": "1"}, "alt"),
        ("${A+alt}", {}, ""),
        ("$A-$$B", {"A": "x"}, "x-$B"),
        ("${A:-${B:-z}}", {}, "z"),
        ("${A}", {}, ""),
    ],
)
def test_interpolation(text: str, env: dict[str, str], out: str) -> None:
    assert interpolate(text, env, Ctx("f", 1, "k")) == out


def test_interpolation_required_variable_names_line() -> None:
    with pytest.raises(SourceError) as info:
        interpolate("${DB:?set DB}", {}, Ctx("compose.yaml", 7, "$"))
    assert str(info.value).startswith("compose.yaml:7:")
    assert "set DB" in str(info.value)


def test_compose_short_and_long_syntax(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=1.4\n")
    f = write(
        tmp_path,
        "c.yaml",
        """
services:
  app:
    image: "app:${TAG}"
    entrypoint: /bin/entry --flag
    command: serve "two words"
    cap_add: [NET_ADMIN]
    security_opt: ["seccomp=unconfined", "apparmor:unconfined", "label:type:spc_t",
                   "systempaths=unconfined", "no-new-privileges"]
    mem_limit: 128m
    pids_limit: -1
    cpu_quota: 50000
    pid: host
    ipc: shareable
    uts: host
    userns_mode: host
    network_mode: host
    group_add: [audio, 5]
    sysctls: ["net.ipv4.ip_forward=1"]
    ulimits: {nproc: 64}
    devices: [{source: /dev/fuse, target: /dev/fuse, permissions: rw}]
    environment: [A=1, HOME]
    volumes:
      - ./data:/data:ro,z
      - type: bind
        source: /srv
        target: /srv
        read_only: true
      - type: tmpfs
        target: /cache
        tmpfs: {size: 1048576, mode: 0o1777}
""",
    )
    s = compose.load(f, "app", environ={"HOME": "/root"}).spec
    assert s.image == "app:1.4"
    assert (s.entrypoint, s.command) == (("/bin/entry", "--flag"), ("serve", "two words"))
    assert (s.seccomp, s.apparmor, s.label, s.unmask, s.no_new_privileges) == (
        "unconfined", "unconfined", ("type:spc_t",), True, True
    )  # fmt: skip
    assert (s.memory, s.pids_limit, s.cpus) == (128 * 2**20, None, 0.5)
    assert (s.pid, s.ipc, s.uts, s.userns, s.network) == ("host", "private", "host", "host", "host")
    assert s.group_add == ("audio", "5")
    assert s.sysctls == (("net.ipv4.ip_forward", "1"),)
    assert s.devices == (Device("/dev/fuse", "/dev/fuse", "rw"),)
    assert dict(s.env) == {"A": "1", "HOME": "/root"}
    assert s.volumes == (
        Volume(str(tmp_path / "data"), "/data", True),
        Volume("/srv", "/srv", True),
    )
    assert s.tmpfs == (Tmpfs("/cache", ("size=1048576", "mode=1777")),)


@pytest.mark.parametrize(
    ("service", "line", "key", "why"),
    [
        ("db", 11, "services.db.volumes[0]", "named volume 'dbdata'"),
        ("nope", 3, "services", "no service 'nope' (services: web, db, odd, built)"),
        ("odd", 15, "services.odd.oom_kill_disable", "unknown or unsupported key"),
        ("built", 16, "services.built", "names no image"),
    ],
)
def test_compose_bad_input_names_file_line_and_key(
    tmp_path: Path, service: str, line: int, key: str, why: str
) -> None:
    f = write(
        tmp_path,
        "compose.yaml",
        """# a comment
name: x
services:
  web:
    image: containersec/httpd
    security_opt: [seccomp=unconfined]
  db:
    image: postgres
    restart: always
    volumes:
      - dbdata:/var/lib/postgresql/data
  odd:
    image: containersec/probe
    privileged: true
    oom_kill_disable: true
  built:
    build: .
volumes: {dbdata: {}}
""",
    )
    with pytest.raises(SourceError) as info:
        compose.load(f, service, environ={})
    assert (info.value.path, info.value.line, info.value.key) == (str(f), line, key)
    assert why in str(info.value)


def test_compose_unparsable_and_bad_values(tmp_path: Path) -> None:
    f = write(tmp_path, "c.yaml", "services:\n  web:\n    image: [unclosed\n")
    with pytest.raises(SourceError) as info:
        compose.load(f, "web", environ={})
    assert info.value.key == "yaml"
    assert info.value.line is not None
    f = write(tmp_path, "d.yaml", "services:\n  web:\n    image: x\n    mem_limit: lots\n")
    with pytest.raises(SourceError) as info:
        compose.load(f, "web", environ={})
    assert (info.value.line, info.value.key) == (4, "services.web.mem_limit")
    with pytest.raises(SourceError) as info:
        compose.load(tmp_path / "missing.yaml", "web", environ={})
    assert info.value.key == "file"


# -- kubernetes --------------------------------------------------------------------------


def test_kube_container_level_overrides_pod_level() -> None:
    loaded = kube.load(DATA / "deployment.yaml", "api")
    s = loaded.spec
    assert s.user == "0:10001"  # container runAsUser 0 beats the pod's 10001
    assert s.seccomp == "unconfined"  # container Unconfined beats the pod's RuntimeDefault
    assert s.cap_add == ("CAP_NET_RAW", "CAP_SYS_PTRACE")
    assert s.no_new_privileges is False  # allowPrivilegeEscalation defaults to true
    assert s.group_add == ("2000",)  # fsGroup
    assert (s.entrypoint, s.command) == (("/bin/httpd",), ("-f", "-p", "8080", "-h", "/var/www"))
    assert (s.memory, s.cpus) == (128 * 2**20, 0.5)
    assert s.tmpfs == (Tmpfs("/etc/api", ("ro",)), Tmpfs("/var/cache/api", ("size=16777216",)))
    assert s.origin is not None
    assert (s.origin.kind, s.origin.document, s.origin.line) == ("kube", 1, 36)
    assert any("runAsNonRoot" in n for n in loaded.notes)


def test_kube_restricted_sidecar() -> None:
    s = kube.load(DATA / "deployment.yaml", "metrics").spec
    assert (s.user, s.seccomp, s.cap_drop) == ("10001:10001", "default", ("ALL",))
    assert (s.no_new_privileges, s.read_only, s.memory, s.cpus) == (True, True, 32 * 2**20, 0.1)
    assert s.entrypoint is None


def test_kube_cronjob_defaults_are_kubernetes_not_docker() -> None:
    loaded = kube.load(DATA / "cronjob.yaml")
    s = loaded.spec
    assert (s.network, s.uts) == ("host", "host")  # hostNetwork shares the UTS namespace
    assert s.seccomp == "unconfined"  # no seccompProfile: Unconfined in Kubernetes
    assert s.cap_add == ("CAP_DAC_READ_SEARCH",)
    assert s.volumes == (Volume("/var/tmp", "/backup", False),)
    assert any("Unconfined" in n for n in loaded.notes)


def test_kube_quantities_and_profiles(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "pod.yaml",
        """apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    container.apparmor.security.beta.kubernetes.io/c: unconfined
spec:
  hostPID: true
  hostIPC: true
  hostUsers: false
  securityContext:
    supplementalGroups: [5, 6]
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
    seccompProfile: {type: Localhost, localhostProfile: profiles/audit.json}
  containers:
    - name: c
      image: containersec/probe
      resources: {limits: {memory: 1G, cpu: "2"}}
      securityContext:
        privileged: true
        procMount: Unmasked
        seLinuxOptions: {type: spc_t}
""",
    )
    s = kube.load(f).spec
    assert (s.pid, s.ipc, s.userns, s.privileged, s.unmask) == ("host", "host", "auto", True, True)
    assert s.group_add == ("5", "6")
    assert s.sysctls == (("net.ipv4.ip_unprivileged_port_start", "0"),)
    assert s.seccomp == "/var/lib/kubelet/seccomp/profiles/audit.json"
    assert (s.memory, s.cpus, s.apparmor, s.label) == (10**9, 2.0, "unconfined", ("type:spc_t",))


@pytest.mark.parametrize(
    ("container", "extra", "line", "why"),
    [
        (
            "app",
            "      envFrom: [{secretRef: {name: s}}]\n",
            9,
            "unknown or unsupported key 'envFrom'",
        ),
        ("nope", "", None, "no container 'nope' (containers: Deployment/d:app)"),
        ("app", "      securityContext: {runAsGroup: 5}\n", 9, "runAsGroup without runAsUser"),
        ("app", "      resources: {limits: {memory: lots}}\n", 9, "expected a quantity"),
    ],
)
def test_kube_bad_input(
    tmp_path: Path, container: str, extra: str, line: int | None, why: str
) -> None:
    f = write(tmp_path, "d.yaml", """apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      containers:
      - name: app
        image: containersec/probe
""".replace("      containers:\n      - name: app\n        image: containersec/probe\n",
            "      containers:\n      - name: app\n        image: containersec/probe\n"
            + extra.replace("      ", "        ")))  # fmt: skip
    with pytest.raises(SourceError) as info:
        kube.load(f, container)
    assert why in str(info.value)
    if line is not None:
        assert info.value.line is not None
        assert info.value.line >= line


def test_kube_ambiguous_and_unsupported_volume(tmp_path: Path) -> None:
    two = "kind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: c, image: x}, {name: d, image: x}]\n"
    with pytest.raises(SourceError, match="several containers"):
        kube.load(write(tmp_path, "two.yaml", two))
    pvc = ("kind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - name: c\n    image: x\n"
           "    volumeMounts: [{name: v, mountPath: /d}]\n  volumes:\n"
           "  - name: v\n    persistentVolumeClaim: {claimName: c}\n")  # fmt: skip
    with pytest.raises(SourceError) as info:
        kube.load(write(tmp_path, "pvc.yaml", pvc))
    assert info.value.line == 9
    assert "persistentVolumeClaim" in str(info.value)


# -- quadlet and unit files --------------------------------------------------------------


def test_quadlet() -> None:
    s = quadlet.load(DATA / "web.container").spec
    assert (s.image, s.user, s.cap_drop, s.read_only, s.no_new_privileges) == (
        "containersec/httpd", "1000:1000", ("ALL",), True, True
    )  # fmt: skip
    assert (s.memory, s.pids_limit, s.network) == (64 * 2**20, 64, "none")
    assert s.tmpfs == (Tmpfs("/tmp", ("size=16m",)),)
    assert s.ulimits == (Ulimit("nofile", 1024, 2048),)


def test_quadlet_unsupported_key_names_line(tmp_path: Path) -> None:
    f = write(tmp_path, "a.container", "[Container]\nImage=x\n\nPodmanArgs=--privileged\n")
    with pytest.raises(SourceError) as info:
        quadlet.load(f)
    assert (info.value.line, info.value.key) == (4, "[Container] PodmanArgs")


def test_unit_file_service_sandboxing_to_properties() -> None:
    loaded = unitfile.load(DATA / "worker.service")
    s = loaded.spec
    props = dict(s.properties)
    assert props["DynamicUser"] == "yes"
    assert props["CapabilityBoundingSet"] == ""
    assert props["SystemCallFilter"] == "@system-service"
    assert props["LimitNOFILE"] == "1024:2048"
    assert "Restart" not in props
    assert s.command == ("/bin/sleep", "infinity")
    assert dict(s.env) == {"QUEUE": "jobs", "GREETING": "hello world"}
    assert any("Restart=" in n for n in loaded.notes)


@pytest.mark.parametrize(
    ("line", "why"),
    [("ExecStartPre=/bin/true", "ExecStartPre"), ("ExecStart=+/bin/true", "prefix '+'"),
     ("Frobnicate=yes", "unknown or unsupported [Service] setting Frobnicate=")],
)  # fmt: skip
def test_unit_file_unsupported(tmp_path: Path, line: str, why: str) -> None:
    f = write(tmp_path, "x.service", f"[Unit]\nDescription=x\n[Service]\n{line}\n")
    with pytest.raises(SourceError) as info:
        unitfile.load(f)
    assert info.value.line == 4
    assert why in str(info.value)


# -- marker/policy keys ------------------------------------------------------------------


def test_from_fields_relative_to_base_and_usage_errors() -> None:
    loaded, errors = sources.from_fields({"compose": "compose.yaml", "service": "web"}, DATA)
    assert errors == []
    assert loaded is not None
    assert loaded.spec.image == "containersec/httpd"
    assert sources.from_fields({"image": "x"}, DATA) == (None, [])
    _, errors = sources.from_fields({"service": "web"}, DATA)
    assert errors == ["service= needs compose= or kube="]
    _, errors = sources.from_fields({"compose": "c.yaml", "kube": "k.yaml"}, DATA)
    assert errors == ["name one deployment file, not compose and kube"]
    _, errors = sources.from_fields({"kube": "k.yaml", "service": "x"}, DATA)
    assert errors == ["service= does not apply to kube="]


def test_policy_names_a_compose_service(tmp_path: Path) -> None:
    from pytest_containersec.errors import PolicyError
    from pytest_containersec.policy import policy

    (tmp_path / "compose.yaml").write_text((DATA / "compose.yaml").read_text())
    f = write(tmp_path, "containersec-web.yaml",
              "compose: compose.yaml\nservice: web\nspec:\n  pids_limit: 32\n"
              "profile: restricted\n")  # fmt: skip
    p = policy.load(f)
    assert (p.spec.image, p.spec.user, p.spec.pids_limit) == ("containersec/httpd", "1000:1000", 32)
    bad = write(tmp_path, "containersec-bad.yaml",
                "name: x\ncompose: compose.yaml\nservice: nope\nexpect: [{non_root: true}]\n")  # fmt: skip
    with pytest.raises(PolicyError) as info:
        policy.load(bad)
    assert info.value.line == 2
    assert "no service 'nope'" in str(info.value)
