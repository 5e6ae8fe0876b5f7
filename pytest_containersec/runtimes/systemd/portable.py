"""portable adapter: the workload as a systemd portable service.

Each container is a directory image (a private copy of the image's rootfs, see
``nspawn_image``) that carries the unit ``<name>.service`` whose ExecStart is the
systemd-run runtime's agent; ``portablectl attach --runtime --profile=P`` attaches it, the
spec's fields become a drop-in of the attached unit (``portable_spec``), ``systemctl
start`` runs it. It is then observed exactly as a systemd-run unit (the same container
class): host /proc of the unit's main process, the probe through the agent inside the
unit, ``systemd-analyze security`` beside it as ``declared``.

The manager is the host's systemd when it is PID 1, else a systemd booted in nspawn once
per session (``systemd_run_host``; its rootfs has systemd-container, which ships
portablectl and systemd-portabled), with its own state folder under ``$STATE/portable``.
Where things are:

- host: image ``$STATE/portable/<instance>/images/<name>``, the spec's drop-in
  ``/run/systemd/system/<unit>.d/50-containersec.conf``, the probe copy bound by the
  drop-in; ``attached/<name>`` records each container for the reaper (stop the unit,
  remove the drop-in, ``portablectl detach``, remove the image).
- booted: image ``/var/lib/containersec-portable/<name>`` and the drop-in in
  ``/etc/systemd/system/<unit>.d/`` of the booted system's rootfs copy (written from the
  host: the copy is id-mapped, so root's files are the booted root's); the booted
  system's probe folder, bound into every unit. A dead session's booted system goes whole.

Stop detaches and removes everything; a drop-in setting that systemd ignores (unknown or
invalid: it only logs them) and an image that fails to attach are ContainerStartErrors
carrying systemd's own lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ContainerStartError, RuntimeUnavailable, UnsupportedSpec
from ...linux import hostinfo, session
from ...model import Declared
from ...spec import ContainerSpec
from .. import procs
from ..base import PROBE_BUSYBOX, Availability, Container
from ..nspawn import nspawn_image as images
from ..nspawn.nspawn import reap_state_dirs, state_root
from ..oci.oci import IDLE_COMMAND
from ..probe_copy import ProbeCopy
from . import portable_spec as pspec
from . import systemd_run_declared as decl
from . import systemd_run_host as sdhost
from .systemd_run import START_TIMEOUT, SystemdRunContainer, SystemdRunRuntime, agent_command

if TYPE_CHECKING:
    pass

NAME = pspec.NAME
IMAGES_INSIDE = "/var/lib/containersec-portable"  # the booted kind's image folder
HOST_DROPINS = Path("/run/systemd/system")
BOOTED_DROPINS = "/etc/systemd/system"


def base_dir() -> Path:
    """``$STATE/portable``: the state folders of portable's instances, walked by its own
    :func:`reap` (apart from systemd-run's)."""
    return state_root() / "portable"


def portablectl_missing(kind: str) -> tuple[str, str] | None:
    """Why the manager of ``kind`` has no portablectl, and the fix; None when it has."""
    if kind == "host":
        if shutil.which("portablectl") is None:
            return "portablectl not found", "apt-get install systemd-container"
        return None
    root = sdhost.rootfs_cache()
    if not any((root / p).exists() for p in ("usr/bin/portablectl", "bin/portablectl")):
        return (
            f"the systemd rootfs at {root} has no portablectl",
            "run the project setup (scripts/setup.d/60-systemd-rootfs.sh adds systemd-container)",
        )
    return None


class Paths:
    """Where one container's image and drop-in are, for the host and for its manager."""

    def __init__(self, inst: sdhost.SystemdInstance, name: str) -> None:
        unit = f"{name}.service"
        if inst.kind == "booted":
            root = inst.state / "rootfs"
            self.image_inside = f"{IMAGES_INSIDE}/{name}"
            self.image = root / self.image_inside.lstrip("/")
            self.dropin_inside = f"{BOOTED_DROPINS}/{unit}.d/{pspec.DROPIN_NAME}"
            self.dropin = root / self.dropin_inside.lstrip("/")
        else:
            self.image = inst.state / "images" / name
            self.image_inside = str(self.image)
            self.dropin = HOST_DROPINS / f"{unit}.d" / pspec.DROPIN_NAME
            self.dropin_inside = str(self.dropin)
        self.attached = inst.state / "attached" / name  # the host kind's reaper record


def build_image(cache: Path, dest: Path, name: str, argv: list[str]) -> None:
    """``dest``: a private copy of the image's rootfs that portablectl accepts, with the
    unit ``<name>.service``. Never follows the image's own symlinks (nspawn_image)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    images.prepare_copy(cache, dest)
    for rel, is_dir in (("etc/machine-id", False), ("etc/resolv.conf", False),
                        (".containersec", True), ("var/tmp", True)):  # fmt: skip
        images.ensure_path(dest, rel, is_dir)
    unit = pspec.unit_file(name, argv).encode()
    if not images.write_new(dest, f"usr/lib/systemd/system/{name}.service", unit):
        raise OSError(f"cannot write the unit into {dest}/usr/lib/systemd/system")


def detach(inst: sdhost.SystemdInstance, paths: Paths, unit: str) -> str:
    """Stop and detach one container's unit and remove its image (idempotent); what
    portablectl said when the detach failed ("" when it worked or nothing was attached)."""
    sdhost.stop_unit(inst, unit)
    shutil.rmtree(paths.dropin.parent, ignore_errors=True)
    r = inst.run(["portablectl", "detach", "--runtime", paths.image_inside], timeout=30)
    sdhost.remove_tree(paths.image)
    with contextlib.suppress(OSError):
        paths.attached.unlink()
    out = (r.stderr or r.stdout).strip()
    return "" if r.returncode == 0 or "is not attached" in out else out


class PortableContainer(SystemdRunContainer):
    """A systemd-run unit, made by attaching a portable image with a profile."""

    def __init__(
        self, rt: PortableRuntime, inst: sdhost.SystemdInstance, spec: ContainerSpec, name: str
    ) -> None:
        super().__init__(rt, inst, spec, name)
        self.runtime = NAME
        self.agent.runtime = NAME
        self.profile = spec.portable_profile
        self.paths = Paths(inst, name)
        self.settings: list[tuple[str, str]] = []
        self.detach_error = ""

    def declared(self) -> Declared:
        """systemd-run's, plus the profile, the attached image, the drop-in and the fields
        the profile decides."""
        out = super().declared()
        out["engine"] = "systemd-portabled"
        out["portable_profile"] = self.profile
        out["image"] = self.paths.image_inside
        out["dropin"] = [f"{k}={v}" for k, v in self.settings]
        # Left at their defaults, these mean the profile's own (ProtectSystem=strict on
        # every profile but trusted; no seccomp filter on trusted): not asked for.
        out["profile_decides"] = [
            *([] if self.spec.read_only else ["rootfs_read_only"]),
            *(["seccomp"] if self.spec.seccomp == "default" else []),
        ]
        return out

    def launch(self, host_systemd: bool) -> None:
        """Build, attach, configure and start; the caller stops us on any error."""
        inst = self.inst
        self.agent.prepare([])
        if inst.kind == "host":
            self.paths.attached.parent.mkdir(exist_ok=True)
            self.paths.attached.touch()  # before anything exists: the reaper finds it
        cache, _ = images.rootfs(self.spec.image, state_root(), NAME)
        main = list(self.spec.command) or [PROBE_BUSYBOX, *IDLE_COMMAND]
        if self.spec.entrypoint is not None:
            main = [*self.spec.entrypoint, *self.spec.command]
        run_dir = f"{inst.run_inside}/{self.name}"
        command = agent_command(PROBE_BUSYBOX, run_dir, main)
        build_image(cache, self.paths.image, self.name, command)
        self.argv = ["portablectl", "attach", "--runtime", "--no-reload",
                     f"--profile={self.profile}", self.paths.image_inside]  # fmt: skip
        r = inst.run(self.argv, timeout=START_TIMEOUT)
        if r.returncode != 0:
            raise ContainerStartError(NAME, self.argv, r.returncode, self._attach_failure(r))
        profile_caps = frozenset[str]()
        if self.spec.cap_add or self.spec.cap_drop:
            conf = inst.run(["cat", f"/run/systemd/system.attached/{self.unit}.d/10-profile.conf"])
            profile_caps = pspec.profile_capabilities(conf.stdout)
        self.settings = pspec.dropin(self.spec, profile_caps, host_systemd)
        self.settings += inst.unit_extra_properties(str(self._probe_path()))
        self._write_dropin(pspec.render(self.settings))
        self._reload_checked()
        problem = pspec.tasks_problem(self.show().get("TasksMax", ""))
        if problem is not None:
            raise UnsupportedSpec("pids_limit", NAME, problem)
        self.argv = ["systemctl", "start", self.unit]
        r = inst.run(self.argv, timeout=START_TIMEOUT)
        if r.returncode != 0:  # systemctl's status is not the unit's: _failed reads that
            self._failed(None, r.stderr)
        self._watch_main(command)

    def _failed(self, status: int | None, why: str) -> None:
        """ContainerStartError, with the main process's exit status when it exited."""
        if status is None:
            argv = ["systemctl", "show", self.unit, "-p", "ExecMainCode,ExecMainStatus"]
            shown = decl.parse_show(self.inst.run(argv).stdout)
            if shown.get("ExecMainCode") == "1" and shown.get("ExecMainStatus", "").isdigit():
                status = int(shown["ExecMainStatus"])  # CLD_EXITED
        super()._failed(status, why)

    def _attach_failure(self, r: subprocess.CompletedProcess[str]) -> str:
        """systemd-portabled's journal lines about this image (else its last 5; the
        portabled of a systemd host serves every session), then portablectl's own."""
        log = self.inst.run(["journalctl", "--no-pager", "-o", "cat", "-n", "200",
                             "-u", "systemd-portabled.service"]).stdout.splitlines()  # fmt: skip
        mine = [x for x in log if self.name in x] or log[-5:]
        journal = "\n".join(mine[-20:])
        return f"systemd-portabled's journal:\n{journal}\nportablectl: {r.stderr.strip()}"

    def _probe_path(self) -> Path:
        assert self.probe_copy is not None
        return self.probe_copy.path

    def _write_dropin(self, text: str) -> None:
        d = self.paths.dropin.parent
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.paths.dropin, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _reload_checked(self) -> None:
        """daemon-reload, after ``systemd-analyze verify`` of the unit: systemd only logs
        a setting it ignores (unknown, invalid), and verify prints those lines at once
        (the journal gets them later): each one about the drop-in is an error."""
        check = self.inst.run(["systemd-analyze", "verify", "--man=no", self.unit])
        lines = [x for x in check.stderr.splitlines() if self.paths.dropin_inside in x]
        if lines:
            raise ContainerStartError(
                NAME, self.argv, None,
                "systemd ignores settings of the spec's drop-in:\n" + "\n".join(lines),
            )  # fmt: skip
        r = self.inst.run(["systemctl", "daemon-reload"], timeout=START_TIMEOUT)
        if r.returncode != 0:
            self._failed(r.returncode, f"systemctl daemon-reload: {r.stderr}")

    def _remove_unit(self) -> None:
        """Stop and detach the image (systemd-run's stop does the rest, including the
        background systemd-analyze runs a plain override here used to leave behind)."""
        if self.inst.alive():
            self.detach_error = detach(self.inst, self.paths, self.unit)
        else:
            sdhost.remove_tree(self.paths.image)


class PortableRuntime(SystemdRunRuntime):
    """The ``portable`` runtime: one attached portable image per container."""

    def __init__(self) -> None:
        super().__init__()
        self.name = NAME

    def availability(self) -> Availability:
        """Check the manager (the host's systemd, or the rootfs to boot one), its portablectl and
        the static busybox; boots nothing."""
        reason = sdhost.availability_reason()
        kind = "host" if hostinfo.systemd_is_pid1() else "booted"
        if reason is None:
            reason = portablectl_missing(kind)
        if reason is None:
            try:
                hostinfo.static_busybox()
            except RuntimeUnavailable as exc:
                reason = (str(exc), "apt-get install busybox-static")
        if reason is not None:
            return Availability(NAME, False, reason=reason[0], hint=reason[1])
        out = procs.tool_output(["systemctl", "--version"])
        version = (out.splitlines() or ["systemd ?"])[0].split(" (")[0]
        where = "the host's systemd" if kind == "host" else "booted in nspawn"
        return Availability(NAME, True, f"{version} portabled, {where}")

    def instance(self) -> sdhost.SystemdInstance:
        """The manager as for systemd-run, with its state under :func:`base_dir`; raises
        RuntimeUnavailable when it has no portablectl."""
        with self._lock:
            if self._inst is None or not self._inst.alive():
                if self._inst is not None:
                    self._inst.close()
                kind = "host" if hostinfo.systemd_is_pid1() else "booted"
                missing = portablectl_missing(kind)
                if missing is not None:
                    raise RuntimeUnavailable(NAME, *missing)
                self._inst = sdhost.start_instance(base_dir(), NAME)
            return self._inst

    def start(self, spec: ContainerSpec) -> Container:
        """Attach and start ``spec`` as a portable image; a field the drop-in cannot express is
        refused before the manager boots."""
        host_systemd = hostinfo.systemd_is_pid1()
        pspec.dropin(spec, frozenset(), host_systemd)  # refuse a field before booting
        inst = self.instance()

        def make() -> tuple[PortableContainer, Callable[[], None]]:
            name = session.current().next_name(NAME)
            copy = inst.probe.shared() if inst.probe is not None else ProbeCopy.create(name)
            c = PortableContainer(self, inst, spec, name)
            c.probe_copy = copy
            return c, lambda: c.launch(host_systemd)

        return self._launch(make)

    def reap(self) -> int:
        """Portable's own reaper (:func:`reap`), not systemd-run's."""
        return reap()


def reap() -> int:
    """Remove what dead sessions left: a booted system whole (processes, cgroups, rootfs
    copy with its images), or on a systemd host each recorded container's unit, drop-in,
    attachment and image."""

    def finish(d: Path) -> None:
        if (d / "attached").is_dir():  # the host's systemd: its units and attachments
            host = sdhost.SystemdInstance("host", d, NAME)
            for name in sorted(p.name for p in (d / "attached").iterdir()):
                detach(host, Paths(host, name), f"{name}.service")
        sdhost.remove_propagation(d.name)
        sdhost.remove_tree(d)

    return reap_state_dirs(base_dir(), finish)
