"""Every quadlet key is in exactly one table (MAPPED, IGNORED, UNSUPPORTED), and each
mapped key really reaches the spec (a key listed as mapped and dropped would be a silent
hole)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_containersec.errors import SourceError
from pytest_containersec.sources import quadlet


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# a value each MAPPED key accepts, and the spec field it must change
SAMPLES = {
    "Image": ("y", "image"), "Exec": ("/bin/true", "command"),
    "Entrypoint": ("/bin/sh", "entrypoint"), "User": ("1000", "user"),
    "Group": ("1000", "user"), "AddCapability": ("CAP_NET_ADMIN", "cap_add"),
    "DropCapability": ("ALL", "cap_drop"), "NoNewPrivileges": ("true", "no_new_privileges"),
    "ReadOnly": ("true", "read_only"), "SeccompProfile": ("unconfined", "seccomp"),
    "SecurityLabelDisable": ("true", "label"), "SecurityLabelType": ("spc_t", "label"),
    "Volume": ("/srv:/srv:ro", "volumes"), "Tmpfs": ("/tmp", "tmpfs"),
    "Network": ("host", "network"), "AddDevice": ("/dev/fuse", "devices"),
    "Environment": ("A=1", "env"), "Ulimit": ("nofile=10:20", "ulimits"),
    "Sysctl": ("net.ipv4.ip_forward=1", "sysctls"), "GroupAdd": ("10", "group_add"),
    "UserNS": ("auto", "userns"), "UIDMap": ("0:100000:65536", "userns"),
    "GIDMap": ("0:100000:65536", "gidmap"), "PidsLimit": ("32", "pids_limit"),
    "Unmask": ("ALL", "unmask"),
}  # fmt: skip


def test_each_quadlet_key_is_in_exactly_one_table() -> None:
    tables = {"MAPPED": set(quadlet.MAPPED), "IGNORED": set(quadlet.IGNORED),
              "UNSUPPORTED": set(quadlet.UNSUPPORTED)}  # fmt: skip
    assert len(quadlet.MAPPED) == len(tables["MAPPED"])
    assert len(quadlet.IGNORED) == len(tables["IGNORED"])
    for a, keys in tables.items():
        for b, other in tables.items():
            assert a == b or not keys & other, f"{sorted(keys & other)} in {a} and {b}"


def test_each_mapped_quadlet_key_reaches_the_spec(tmp_path: Path) -> None:
    assert set(SAMPLES) == set(quadlet.MAPPED)
    base = quadlet.load(write(tmp_path, "b.container", "[Container]\nImage=x\n")).spec
    for key, (value, field) in SAMPLES.items():
        extra = {"Group": "User=0\n", "GIDMap": "UIDMap=0:100000:65536\n"}.get(key, "")
        text = f"[Container]\nImage=x\n{extra}{key}={value}\n"
        spec = quadlet.load(write(tmp_path, "k.container", text)).spec
        assert getattr(spec, field) != getattr(base, field), key


@pytest.mark.parametrize("key", sorted(quadlet.UNSUPPORTED))
def test_each_unsupported_quadlet_key_is_refused_naming_it(tmp_path: Path, key: str) -> None:
    f = write(tmp_path, "a.container", f"[Container]\nImage=x\n{key}=something\n")
    with pytest.raises(SourceError, match="not supported by containersec") as info:
        quadlet.load(f)
    assert (info.value.line, info.value.key) == (3, f"[Container] {key}")
