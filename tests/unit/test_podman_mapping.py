"""ContainerSpec -> podman-py kwargs, and podman inspect -> declared (pure; no containers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from podman.domain.containers_create import CreateMixin

from pytest_containersec.errors import RuntimeUnavailable, UnsupportedSpec
from pytest_containersec.linux import caps, hostinfo
from pytest_containersec.runtimes.base import PROBE_DIR
from pytest_containersec.runtimes.oci import oci
from pytest_containersec.runtimes.podman import podman as podman_adapter
from pytest_containersec.runtimes.podman.podman import PodmanRuntime
from pytest_containersec.runtimes.podman.podman_service import RootlessIds
from pytest_containersec.runtimes.podman.podman_spec import (
    SECCOMP_ANNOTATION,
    create_kwargs,
    declared_from_inspect,
)
from pytest_containersec.spec import ContainerSpec

BUSYBOX = "/host/busybox"
IDS = RootlessIds(uid=1001, gid=1001, subuid=(100000, 65536), subgid=(200000, 65536))


def kw(rootless: RootlessIds | None = None, **spec: Any) -> dict[str, Any]:
    return create_kwargs(ContainerSpec(**spec), "podman", rootless, probe=BUSYBOX)


def render(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What podman-py sends to the service (catches kwargs it drops or rejects)."""
    payload: dict[str, Any] = CreateMixin._render_payload({"image": "x", **kwargs})
    return payload


def test_defaults() -> None:
    k = kw()
    assert k["entrypoint"] == oci.IDLE_ENTRYPOINT
    assert k["command"] == oci.IDLE_COMMAND
    assert k["mounts"] == [
        {"type": "bind", "source": BUSYBOX, "target": PROBE_DIR, "read_only": True}
    ]
    assert k["network_mode"] == "none"
    assert k["privileged"] is False
    assert k["read_only"] is False
    for absent in ("user", "cap_add", "cap_drop", "seccomp_profile_path", "userns_mode"):
        assert absent not in k
    p = render(k)
    assert p["mounts"] == [
        {"destination": PROBE_DIR, "options": ["ro"], "source": BUSYBOX, "type": "bind"}
    ]
    assert p["netns"] == {"nsmode": "none"}


def test_command_keeps_image_entrypoint() -> None:
    k = kw(command=["sleep", "5"])
    assert "entrypoint" not in k
    assert k["command"] == ["sleep", "5"]


def test_user_and_caps() -> None:
    k = kw(user="1000:1000", cap_add=["net_raw", "perfmon"], cap_drop=["ALL"])
    assert k["user"] == "1000:1000"
    assert k["cap_add"] == ["CAP_NET_RAW", "CAP_PERFMON"]
    assert k["cap_drop"] == ["ALL"]
    every = sorted(caps.ALL_CAPS)
    assert kw(cap_drop=every)["cap_drop"] == ["ALL"]
    assert kw(cap_add=every)["cap_add"] == ["ALL"]
    p = render(k)
    assert (p["user"], p["cap_add"], p["cap_drop"]) == (
        "1000:1000",
        ["CAP_NET_RAW", "CAP_PERFMON"],
        ["ALL"],
    )


def test_flags_and_limits() -> None:
    k = kw(
        privileged=True,
        no_new_privileges=True,
        read_only=True,
        memory="64m",
        cpus=1.5,
        pids_limit=50,
        env={"A": "1"},
    )
    assert k["privileged"] is True
    assert k["no_new_privileges"] is True
    assert k["read_only"] is True
    assert k["mem_limit"] == 64 * 1024**2
    assert (k["cpu_period"], k["cpu_quota"]) == (100_000, 150_000)
    assert "nano_cpus" not in k  # podman-py drops nano_cpus without a word
    assert k["pids_limit"] == 50
    assert k["environment"] == {"A": "1"}
    p = render(k)
    assert p["read_only_filesystem"] is True
    assert p["no_new_privileges"] is True
    assert p["resource_limits"]["memory"]["limit"] == 64 * 1024**2
    assert p["resource_limits"]["cpu"]["quota"] == 150_000
    assert p["resource_limits"]["cpu"]["period"] == 100_000
    assert p["resource_limits"]["pids"] == {"limit": 50}
    assert p["env"] == {"A": "1"}


def test_seccomp(tmp_path: Path) -> None:
    assert "seccomp_profile_path" not in kw(seccomp="default")
    k = kw(seccomp="unconfined")
    assert k["seccomp_profile_path"] == "unconfined"
    assert k["annotations"] == {SECCOMP_ANNOTATION: "unconfined"}
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    k = kw(seccomp=str(profile))
    assert k["seccomp_profile_path"] == str(profile)
    p = render(k)
    assert p["seccomp_profile_path"] == str(profile)
    assert p["annotations"] == {SECCOMP_ANNOTATION: str(profile)}


@pytest.mark.parametrize("content", [None, "{not json"])
def test_seccomp_unreadable_profile_is_unsupported(tmp_path: Path, content: str | None) -> None:
    profile = tmp_path / "p.json"
    if content is not None:
        profile.write_text(content)
    with pytest.raises(UnsupportedSpec) as exc:
        kw(seccomp=str(profile))
    assert (exc.value.field, exc.value.runtime) == ("seccomp", "podman")


def test_userns_keywords() -> None:
    assert "userns_mode" not in kw()
    assert kw(userns="host")["userns_mode"] == "host"
    k = kw(userns="auto")
    assert (k["userns_mode"], k["idmappings"]) == ("auto", {"AutoUserNs": True})
    p = render(k)
    assert p["userns"] == {"nsmode": "auto"}
    assert p["idmappings"] == {"AutoUserNs": True}
    assert kw(IDS, userns="keep-id")["userns_mode"] == "keep-id"


def test_keep_id_rootful_is_unsupported() -> None:
    with pytest.raises(UnsupportedSpec) as exc:
        kw(userns="keep-id")
    assert exc.value.field == "userns"
    assert "rootful" in str(exc.value)


def test_explicit_maps_rootful() -> None:
    k = kw(userns="0:200000:1000,1000:300000:1")
    assert k["userns_mode"] == "private"
    m = k["idmappings"]
    assert m["HostUIDMapping"] is False
    assert m["HostGIDMapping"] is False
    want = [
        {"container_id": 0, "host_id": 200000, "size": 1000},
        {"container_id": 1000, "host_id": 300000, "size": 1},
    ]
    assert m["UIDMap"] == want
    assert m["GIDMap"] == want
    assert render(k)["userns"] == {"nsmode": "private"}


def test_explicit_maps_rootless_are_translated() -> None:
    """Host ids -> ids of the rootless user's namespace (0 = itself, 1.. = its sub-ids)."""
    same = RootlessIds(1001, 1001, (100000, 65536), (100000, 65536))
    k = kw(same, userns="0:1001:1,1:100000:1000")
    assert (
        k["idmappings"]["UIDMap"]
        == k["idmappings"]["GIDMap"]
        == [
            {"container_id": 0, "host_id": 0, "size": 1},
            {"container_id": 1, "host_id": 1, "size": 1000},
        ]
    )
    with pytest.raises(UnsupportedSpec) as exc:  # gids: 100000 is not in the subgid range
        kw(IDS, userns="1:100000:1000")
    assert exc.value.field == "userns"
    assert "gid" in exc.value.reason
    with pytest.raises(UnsupportedSpec) as exc:  # and 200010 is not in the subuid range
        kw(IDS, userns="0:200010:5")
    assert "host uids 200010-200014" in exc.value.reason


@pytest.mark.parametrize("userns", ["0:0:1", "0:99999:2", "0:165000:1000", "0:1002:1"])
def test_rootless_maps_outside_the_users_ranges_are_unsupported(userns: str) -> None:
    ids = RootlessIds(1001, 1001, (100000, 65536), (100000, 65536))
    with pytest.raises(UnsupportedSpec) as exc:
        create_kwargs(ContainerSpec(userns=userns), "podman-rootless", ids, probe=BUSYBOX)
    assert (exc.value.field, exc.value.runtime) == ("userns", "podman-rootless")


def test_volumes_and_network() -> None:
    k = kw(volumes=["/a:/b:ro", "/a:/c"], network="host")
    assert k["mounts"][1:] == [
        {"type": "bind", "source": "/a", "target": "/b", "read_only": True},
        {"type": "bind", "source": "/a", "target": "/c", "read_only": False},
    ]
    assert k["network_mode"] == "host"
    p = render(k)
    assert [m["options"] for m in p["mounts"]] == [["ro"], ["ro"], []]
    assert p["netns"] == {"nsmode": "host"}


def test_every_spec_field_reaches_the_payload(tmp_path: Path) -> None:
    """A full spec renders without podman-py rejecting or dropping a keyword."""
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    spec = ContainerSpec(
        image="img", command=["true"], user="1", cap_add=["SYS_ADMIN"], cap_drop=["NET_RAW"],
        privileged=True, seccomp=str(profile), no_new_privileges=True, read_only=True,
        memory="1g", cpus=0.5, pids_limit=9, userns="0:100000:10", volumes=["/x:/y"],
        network="host", env={"K": "V"},
    )  # fmt: skip
    assert set(spec.non_default_fields()) == {
        "image", "command", "user", "cap_add", "cap_drop", "privileged", "seccomp",
        "no_new_privileges", "read_only", "memory", "cpus", "pids_limit", "userns",
        "volumes", "network", "env",
    }  # fmt: skip
    render(create_kwargs(spec, "podman", None, probe=BUSYBOX))


INSPECT: dict[str, Any] = {
    "AppArmorProfile": "",
    "Config": {"User": "1000"},
    "HostConfig": {
        "Binds": [
            f"{BUSYBOX}:{PROBE_DIR}:ro,rprivate,rbind",
            "/a:/b:ro,rprivate,rbind",
            "/a:/c:rw,rprivate,rbind",
        ],
        "CapAdd": ["CAP_SYS_ADMIN"],
        "CapDrop": ["CAP_NET_RAW", "CAP_CHOWN"],
        "CpuPeriod": 100000,
        "CpuQuota": 50000,
        "Memory": 67108864,
        "NanoCpus": 0,
        "NetworkMode": "none",
        "PidsLimit": 2048,
        "Privileged": False,
        "ReadonlyRootfs": True,
        "SecurityOpt": ["no-new-privileges"],
        "UsernsMode": "",
    },
}


def test_declared_from_inspect() -> None:
    d = declared_from_inspect(INSPECT, rootless=True)
    assert d == {
        "engine": "podman",
        "rootless": True,
        "user": "1000",
        "cap_add": ["CAP_SYS_ADMIN"],
        "cap_drop": ["CAP_CHOWN", "CAP_NET_RAW"],
        "privileged": False,
        "seccomp": "default",
        "no_new_privileges": True,
        "read_only": True,
        "memory": 67108864,
        "cpus": 0.5,
        "pids_limit": 2048,
        "userns_mode": None,
        "network_mode": "none",
        "binds": ["/a:/b:ro", "/a:/c"],
        "apparmor_profile": None,
        "daemon_security_options": [],
        "oci_runtime": None,
        "pid_mode": None,
        "ipc_mode": None,
        "uts_mode": None,
        "group_add": [],
        "devices": [],
        "tmpfs": [],
        "ulimits": {},
        "sysctls": {},
        "unmask": False,
    }


def test_declared_seccomp() -> None:
    def with_opts(*opts: str, privileged: bool = False) -> dict[str, Any]:
        hc = {**INSPECT["HostConfig"], "SecurityOpt": list(opts), "Privileged": privileged}
        return {**INSPECT, "HostConfig": hc}

    assert declared_from_inspect(with_opts("seccomp=unconfined"), False)["seccomp"] == "unconfined"
    assert declared_from_inspect(with_opts("seccomp=/p.json"), False)["seccomp"] == "custom"
    assert declared_from_inspect(with_opts(privileged=True), False)["seccomp"] == "unconfined"
    oci_with = {"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"}}}
    assert declared_from_inspect(with_opts(), False, oci_with)["seccomp"] == "default"
    # the OCI config the runtime got is the truth: no filter there means none
    assert declared_from_inspect(with_opts(), False, {"linux": {}})["seccomp"] == "unconfined"
    assert declared_from_inspect(with_opts(), False)["no_new_privileges"] is False


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A host with podman, uidmap and a rootless user with ranges; tests knock one out."""
    state: dict[str, Any] = {"missing": set(), "ranges": {"/etc/subuid", "/etc/subgid"}}
    fake_pw = type("Pw", (), {"pw_name": "containersec", "pw_uid": 1001, "pw_gid": 1001})

    def which(name: str, *args: Any, **kwargs: Any) -> str | None:
        return None if name in state["missing"] else f"/usr/bin/{name}"

    def subid_range(user: str, path: str) -> tuple[int, int] | None:
        return (100000, 65536) if path in state["ranges"] else None

    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.setattr(hostinfo, "subid_range", subid_range)
    monkeypatch.setattr(hostinfo, "rootless_user", lambda: state.get("pw", fake_pw))
    monkeypatch.setattr(podman_adapter, "version_line", lambda: "Podman 4.3.1")
    return state


def test_availability_ok(host: dict[str, Any]) -> None:
    a = PodmanRuntime(rootless=True).availability()
    assert (a.available, a.version, a.rootless) == (True, "Podman 4.3.1", True)


@pytest.mark.parametrize("rootless", [False, True])
def test_unavailable_without_podman(host: dict[str, Any], rootless: bool) -> None:
    host["missing"].add("podman")
    a = PodmanRuntime(rootless=rootless).availability()
    assert not a.available
    assert a.hint == "apt-get install podman"


@pytest.mark.parametrize("kind", ["subuid", "subgid"])
def test_unavailable_without_subid_range(host: dict[str, Any], kind: str) -> None:
    host["ranges"].discard(f"/etc/{kind}")
    a = PodmanRuntime(rootless=True).availability()
    assert not a.available
    assert a.reason == f"user containersec has no {kind} range in /etc/{kind}"
    assert a.hint == "run make setup"
    assert a.line().startswith("podman-rootless: unavailable: user containersec has no")


def test_unavailable_without_newuidmap(host: dict[str, Any]) -> None:
    host["missing"].add("newuidmap")
    a = PodmanRuntime(rootless=True).availability()
    assert (a.available, a.hint) == (False, "apt-get install uidmap")


def test_unavailable_without_rootless_user(
    host: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> Any:
        raise RuntimeUnavailable("podman-rootless", "user 'containersec' does not exist", "setup")

    monkeypatch.setattr(hostinfo, "rootless_user", missing)
    a = PodmanRuntime(rootless=True).availability()
    assert not a.available
    assert "does not exist" in a.reason


def test_the_client_takes_podmans_version_from_ping_and_never_asks_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/version makes Podman run conmon and the OCI runtime for their versions (~0.45 s a
    request, on the critical path of every session); /_ping's headers name it."""
    import socket
    import threading

    from pytest_containersec.runtimes.podman import podman as pm
    from pytest_containersec.runtimes.podman import podman_service as ps

    sock = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen()
    paths: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                paths.append(conn.recv(4096).split(b" ")[1].decode())
                conn.sendall(b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\n"
                             b"Libpod-Api-Version: 4.9.7\r\nContent-Length: 2\r\n\r\nOK")  # fmt: skip

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(pm, "check_host", lambda name, rootless: None)
    monkeypatch.setattr(ps.PodmanService, "ensure",
                        classmethod(lambda cls, *a: cls("podman", sock)))  # fmt: skip
    rt = pm.PodmanRuntime(rootless=False)
    try:
        rt.client  # noqa: B018 - connects
        assert rt.version == "4.9.7"
        assert rt.availability().version == "Podman 4.9.7"
        assert paths == ["/_ping"]
    finally:
        server.close()
