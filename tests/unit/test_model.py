"""Facts JSON round-trip and id-map helpers."""

from __future__ import annotations

import json

from pytest_containersec.model import Facts, Mismatch, map_id, unmap_id

from .factories import privileged, rootless


def test_json_round_trip() -> None:
    for f in (
        rootless(),
        privileged(mismatches=(Mismatch("seccomp", "filter", "disabled", "declared"),)),
    ):
        text = f.to_json()
        assert Facts.from_json(text) == f
        d = json.loads(text)
        assert d["uid_map"] == [list(m) for m in f.uid_map]
        assert set(d) >= {
            "runtime",
            "engine_rootless",
            "user",
            "uid_map",
            "gid_map",
            "capabilities",
            "seccomp",
            "no_new_privs",
            "lsm",
            "cgroup",
            "rootfs_read_only",
            "mounts",
            "access",
            "declared",
        }


def test_map_and_unmap() -> None:
    m = ((0, 1001, 1), (1, 100000, 65536))
    assert map_id(m, 0) == 1001
    assert map_id(m, 1000) == 100999
    assert map_id(m, 70000) is None
    assert unmap_id(m, 100999) == 1000
    assert unmap_id(m, 0) is None
