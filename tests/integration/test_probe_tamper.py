"""A container that attacks its own probe folder is caught, and affects no other container.

On every runtime, a container with CAP_SYS_ADMIN (privileged on Podman, ``cap_add
SYS_ADMIN`` on Docker; nspawn has it in its user namespace; a root systemd-run unit gets
what its manager grants) tries the
two attacks that work on some engine: remount /.containersec read-write and replace its
busybox (possible where container root is host root), and cover /.containersec with a
folder of its own (possible in any mount namespace the container owns). Whatever
succeeded must show in its Facts as a ``probe`` mismatch with no access verdict; a
container started before it, one started after it in the same session and one started by
the next session (the CLI, a new process) all report the same Facts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_containersec import expect
from pytest_containersec.errors import ProbeModified
from pytest_containersec.linux import hostinfo
from pytest_containersec.model import Facts
from pytest_containersec.runtimes import RUNTIME_NAMES, Runtime
from pytest_containersec.runtimes.base import Container
from pytest_containersec.spec import ContainerSpec

from .conftest import runtime_or_skip

B = "/.containersec/busybox"
# Each attack prints ATTACK:<name>-ok or ATTACK:<name>-failed, then the container idles
# on a busybox of its own (the probe's may be gone).
ATTACK = (
    "/.containersec/busybox mkdir -p /tmp/own /tmp/fake; "
    "/.containersec/busybox cp /.containersec/busybox /tmp/own/busybox; B=/tmp/own/busybox; "
    "if $B mount -o remount,rw,bind /.containersec 2>/dev/null "
    "&& $B rm -f /.containersec/busybox "
    "&& $B printf '#!/bin/sh\\necho forged\\n' >/.containersec/busybox "
    "&& $B chmod 755 /.containersec/busybox; "
    "then echo ATTACK:rewrite-ok; else echo ATTACK:rewrite-failed; fi; "
    "$B cp $B /tmp/fake/busybox; "
    "if $B mount --bind /tmp/fake /.containersec 2>/dev/null; "
    "then echo ATTACK:cover-ok; else echo ATTACK:cover-failed; fi; "
    "exec $B sleep 1000"
)
# Where the attack is known to work on both test hosts (privileged Podman: container root
# is host root, unconfined): the test must see it caught there, or it could not fail.
MUST_SUCCEED = {"podman": {"rewrite", "cover"}, "podman-rootless": {"cover"}, "nspawn": {"cover"}}


def sys_admin(runtime: str) -> dict[str, Any]:
    if runtime.startswith("podman"):
        return {"privileged": True}
    if runtime.startswith("docker"):
        return {"cap_add": ["SYS_ADMIN"], "seccomp": "unconfined"}
    return {}  # nspawn: CAP_SYS_ADMIN in its user namespace; systemd-run: what root units get


def wait_for_attacks(c: Container, timeout: float = 30.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    while True:
        # whole lines only: a journal (systemd-run) also logs the command line itself
        lines = c.logs().splitlines()
        done = {
            name: f"ATTACK:{name}-ok" in lines
            for name in ("rewrite", "cover")
            if f"ATTACK:{name}-ok" in lines or f"ATTACK:{name}-failed" in lines
        }
        logs = "\n".join(lines)
        if len(done) == 2:
            return done
        assert time.monotonic() < deadline, f"the attacks did not finish: {logs[-500:]}"
        time.sleep(0.05)


def essentials(f: Facts) -> dict[str, Any]:
    """What a neighbour must report exactly as a container with no hostile neighbour."""
    dynamic = f.runtime == "portable" and f.declared.get("dynamic_user")  # a new uid each unit
    return {
        "uid": "dynamic" if dynamic else (f.user.uid, f.user.gid),
        "caps": f.capabilities,
        "seccomp": f.seccomp,
        "no_new_privs": f.no_new_privs,
        "access": f.access,
        "operations": f.operations,
        "probe_modified": f.probe_modified,
    }


@pytest.mark.parametrize("runtime", RUNTIME_NAMES)
def test_a_hostile_container_is_caught_and_others_are_unaffected(runtime: str) -> None:
    rt: Runtime = runtime_or_skip(runtime)
    host_busybox = Path(hostinfo.static_busybox()).read_bytes()
    try:
        with rt.start(ContainerSpec()) as before:
            baseline = essentials(before.facts())
        assert baseline["probe_modified"] is None
        assert baseline["access"]

        argv = [B, "sh", "-c", ATTACK]
        hostile = rt.start(ContainerSpec(command=argv, **sys_admin(runtime)))
        with hostile:
            done = wait_for_attacks(hostile)
            print(f"{runtime}: {done}")
            assert {a for a, ok in done.items() if ok} >= MUST_SUCCEED.get(runtime, set())
            f = hostile.facts()
            copy = hostile.probe_copy
            assert copy is not None
            if any(done.values()):
                assert f.probe_modified is not None, done
                assert f.access == {}
                assert f.operations == {}
                with pytest.raises(expect.CheckFailed, match="modified from inside"):
                    expect.denied(f, "/etc/shadow", "r")
                with pytest.raises(expect.CheckFailed, match="probe mount"):
                    expect.not_privileged(f)
                with pytest.raises(ProbeModified, match="modified from inside"):
                    hostile.exec(["id"])  # nothing runs through a modified probe
            else:  # the engine refused both: an ordinary snapshot
                assert f.probe_modified is None, f.probe_modified
                assert f.access
            # the same session: a neighbour while the hostile one still runs, and after
            with rt.start(ContainerSpec()) as during:
                assert essentials(during.facts()) == baseline
        assert copy.root.exists() is not copy.owned  # a booted systemd's units share one
        with rt.start(ContainerSpec()) as after:
            assert essentials(after.facts()) == baseline
    finally:
        rt.close()
    assert Path(hostinfo.static_busybox()).read_bytes() == host_busybox

    # the next session: another process, through the CLI
    out = subprocess.run(
        [sys.executable, "-m", "pytest_containersec.cli.cli", "facts", "--runtime", runtime,
         "containersec/probe"],
        capture_output=True, text=True, timeout=300, env={**os.environ}, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert essentials(Facts.from_json(out.stdout)) == baseline
