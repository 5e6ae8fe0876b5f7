"""ContainerSpec -> ctr run argv, and the declared view of ``ctr containers info``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_containersec.errors import UnsupportedSpec
from pytest_containersec.linux import caps
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.runtimes.containerd import containerd_spec as m
from pytest_containersec.runtimes.containerd.containerd import grpc_answers
from pytest_containersec.runtimes.nspawn import nspawn_agent as agent
from pytest_containersec.spec import ContainerSpec


def argv(spec: ContainerSpec, **kw: object) -> list[str]:
    args: dict[str, object] = dict(
        name="c", log=Path("/s/log"), pid_file=Path("/s/pid"), probe_dir=Path("/s/probe"),
        tools=None, prefix=[], labels={"io.containersec.owner": "1.2"},
    )  # fmt: skip
    args.update(kw)
    return m.run_argv(spec, **args)  # type: ignore[arg-type]


def test_image_refs_as_containerd_names_them() -> None:
    assert m.image_ref("containersec/probe") == "docker.io/containersec/probe:latest"
    assert m.image_ref("busybox:1.36") == "docker.io/library/busybox:1.36"
    assert m.image_ref("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    assert m.image_ref("quay.io/x/y:1") == "quay.io/x/y:1"


def test_defaults_seccomp_on_and_the_probe_mounted_read_only() -> None:
    a = argv(ContainerSpec())
    assert a[:2] == ["run", "-d"]
    assert "--seccomp" in a  # containerd's default profile; a bare ctr run has none
    assert "--cgroup=/containersec.containerd/c" in a
    assert "--label=io.containersec.owner=1.2" in a
    assert "--mount=type=bind,src=/s/probe,dst=/.containersec,options=rbind:ro" in a
    assert a[a.index("c", a.index("docker.io/containersec/probe:latest")) + 1 :] == [
        PROBE_BUSYBOX, "sleep", "2147483647",
    ]  # fmt: skip
    assert not [x for x in a if x.startswith(("--cap-", "--uidmap", "--net-host"))]


def test_capabilities_follow_dockers_arithmetic() -> None:
    a = argv(ContainerSpec(cap_drop=["ALL"], cap_add=["NET_ADMIN"]))
    drops = {x.split("=")[1] for x in a if x.startswith("--cap-drop=")}
    assert drops == set(m.CONTAINERD_DEFAULT_CAPS)
    assert [x for x in a if x.startswith("--cap-add=")] == ["--cap-add=CAP_NET_ADMIN"]
    # a user switch keeps setuid/setgid/setpcap until setpriv dropped them
    u = argv(ContainerSpec(user="1000", cap_drop=["ALL"]), prefix=["/p/setpriv", "--"])
    assert not [x for x in u if x.startswith("--cap-add=")]
    kept = set(m.CONTAINERD_DEFAULT_CAPS) - {
        x.split("=")[1] for x in u if x.startswith("--cap-drop=")
    }
    assert kept == set(agent.HELPER_CAPS)
    assert u[-5:-3] == ["/p/setpriv", "--"]
    assert "--privileged" in argv(ContainerSpec(privileged=True))
    assert "--seccomp" not in argv(ContainerSpec(privileged=True))
    assert m.capability_set(ContainerSpec(privileged=True)) == caps.ALL_CAPS


class _Statvfs:
    def __init__(self, flags: int) -> None:
        self.f_flag = flags


def test_every_other_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the sources' mounts as on a host whose /tmp is tmpfs with nosuid,nodev
    flags = os.ST_NOSUID | os.ST_NODEV | os.ST_RELATIME
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(flags))
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    spec = ContainerSpec(
        read_only=True, memory="64m", cpus=0.5, userns="0:100000:65536", network="host",
        volumes=[f"{tmp_path}:/data:ro"], env={"A": "b c"}, seccomp=str(profile),
        command=["id"],
    )  # fmt: skip
    a = argv(spec, tools=Path("/t"), runc_binary="crun")
    for flag in ("--read-only", f"--memory-limit={64 * 1024**2}", "--cpus=0.5",
                 "--uidmap=0:100000:65536", "--gidmap=0:100000:65536", "--net-host",
                 f"--mount=type=bind,src={tmp_path},dst=/data,options=rbind:ro:nosuid:nodev:relatime",
                 f"--mount=type=bind,src=/t,dst={agent.TOOLS_DIR},options=rbind:ro:nosuid:nodev:relatime",
                 "--env=A=b c", "--seccomp", f"--seccomp-profile={profile}",
                 "--runc-binary=crun"):  # fmt: skip
        assert flag in a, flag
    assert a[-1] == "id"
    assert "--seccomp" not in argv(ContainerSpec(seccomp="unconfined"))


def test_locked_mount_flags_are_kept_only_in_a_user_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runc's read-only remount in a user namespace fails with EPERM unless it keeps the
    source mount's locked flags (Docker and Podman add them; ctr does not)."""
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(os.ST_NOSUID | os.ST_NOEXEC))
    vol = ContainerSpec(volumes=[f"{tmp_path}:/data:ro"])
    assert f"--mount=type=bind,src={tmp_path},dst=/data,options=rbind:ro" in argv(vol)
    mapped = argv(ContainerSpec(volumes=[f"{tmp_path}:/data:ro"], userns="0:100000:65536"))
    assert f"--mount=type=bind,src={tmp_path},dst=/data,options=rbind:ro:nosuid:noexec" in mapped
    monkeypatch.setattr(os, "statvfs", lambda path: (_ for _ in ()).throw(OSError(2, "x")))
    assert m.locked_flags("/no/such") == []


def test_what_ctr_cannot_express() -> None:
    for spec, field in [
        (ContainerSpec(properties={"A": "b"}), "properties"),
        (ContainerSpec(userns="keep-id"), "userns"),
        (ContainerSpec(userns="auto"), "userns"),
        (ContainerSpec(volumes=["/a,b:/c"]), "volumes"),
        (ContainerSpec(seccomp="/no/such/profile.json"), "seccomp"),
    ]:
        with pytest.raises(UnsupportedSpec) as info:
            argv(spec)
        assert info.value.field == field
        assert info.value.runtime == "containerd"


BOUNDING = sorted((caps.DOCKER_DEFAULT_CAPS | {"CAP_SYS_ADMIN"}) - {"CAP_NET_RAW"})
INFO = {
    "Runtime": {"Name": "io.containerd.runc.v2"},
    "Spec": {
        "process": {"noNewPrivileges": True, "capabilities": {"bounding": BOUNDING}},
        "root": {"readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
            {"destination": "/.containersec", "type": "bind", "source": "/s/probe",
             "options": ["rbind", "ro"]},
            {"destination": "/data", "type": "bind", "source": "/d", "options": ["rbind", "ro"]},
        ],
        "linux": {
            "resources": {"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}},
            "namespaces": [{"type": "pid"}, {"type": "network"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
            "maskedPaths": ["/proc/kcore"],
            "cgroupsPath": "/containersec.containerd/c",
        },
    },
}  # fmt: skip


def test_declared_from_ctr_info() -> None:
    d = m.declared_from_info(INFO, ContainerSpec(), pids_limit=50)
    assert d["cap_add"] == ["CAP_SYS_ADMIN"]
    assert d["cap_drop"] == ["CAP_NET_RAW"]
    assert d["no_new_privileges"]
    assert d["read_only"]
    assert (d["memory"], d["cpus"], d["pids_limit"]) == (67108864, 0.5, 50)
    assert d["seccomp"] == "default"
    assert d["userns_mode"] == "0:100000:65536"
    assert d["network_mode"] == "none"
    assert d["binds"] == ["/d:/data:ro"]
    assert d["runtime"] == "io.containerd.runc.v2"
    bare = m.declared_from_info({"Spec": {}}, ContainerSpec(), None)
    assert bare["seccomp"] == "unconfined"
    assert bare["network_mode"] == "host"
    assert bare["userns_mode"] == "host"


def test_grpc_probe_on_a_missing_socket(tmp_path: Path) -> None:
    assert grpc_answers(tmp_path / "none.sock", 0.1) is False


def test_docker_store_lookup_tells_a_missing_image_from_a_docker_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess

    from pytest_containersec.errors import RuntimeUnavailable
    from pytest_containersec.runtimes.containerd import containerd

    def answer(rc: int, out: str = "", err: str = "") -> None:
        done = subprocess.CompletedProcess([], rc, out, err)
        monkeypatch.setattr(subprocess, "run", lambda *a, **k: done)

    answer(0, '{"Id": "sha256:abc", "Config": {"User": "nonroot"}}\n')
    assert containerd._docker_image("containersec/probe") == ("sha256:abc", {"User": "nonroot"})
    answer(0, '{"Id": "sha256:abc", "Config": null}\n')
    assert containerd._docker_image("containersec/probe") == ("sha256:abc", {})
    answer(1, err="Error response from daemon: No such image: containersec/nope")
    assert containerd._docker_image("containersec/nope") is None
    answer(1, err="Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    with pytest.raises(RuntimeUnavailable, match="Cannot connect"):
        containerd._docker_image("containersec/probe")

    def slow(*a: object, **k: object) -> None:
        raise subprocess.TimeoutExpired(["docker"], 60)

    monkeypatch.setattr(subprocess, "run", slow)
    with pytest.raises(RuntimeUnavailable, match="timed out"):
        containerd._docker_image("containersec/probe")
