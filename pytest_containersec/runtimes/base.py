"""The contract every runtime adapter fulfils: a Runtime starts Containers.

An adapter implements exec, stop, declared and logs; this Container adds, once for all,
the probe folder's checks, Facts (through :mod:`..observe`), probe access and testinfra.
The exec contract (ExecResult, the probe's places) is observation's, re-exported here.
"""

from __future__ import annotations

import abc
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from ..errors import ContainerStartError, ProbeModified
from ..model import Declared
from ..observe.target import (
    DEFAULT_EXEC_TIMEOUT,
    MAX_OUTPUT,
    PROBE_BUSYBOX,
    PROBE_DIR,
    ExecResult,
)
from ..spec import ContainerSpec

__all__ = [
    "DEFAULT_EXEC_TIMEOUT",
    "MAX_OUTPUT",
    "PROBE_BUSYBOX",
    "PROBE_DIR",
    "Availability",
    "Container",
    "ExecResult",
    "LiveContainers",
    "Runtime",
    "log_tail",
]

if TYPE_CHECKING:
    from ..linux.processes import ProcessSelector
    from ..model import AccessResult, Facts
    from .probe_copy import ProbeCopy


def log_tail(path: Path, limit: int = MAX_OUTPUT) -> str:
    """The last ``limit`` bytes of a container's log file (bounded however much it wrote)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read(limit).decode("utf-8", "replace")
    except OSError as exc:
        return f"(logs unavailable: {exc})"


@dataclass(frozen=True)
class Availability:
    """What a runtime says about this host: ``available`` with the engine's ``version``, or the
    ``reason`` it cannot run here and the ``hint`` that fixes it."""

    runtime: str
    available: bool
    version: str = ""
    reason: str = ""
    hint: str = ""
    rootless: bool = False

    def line(self) -> str:
        """One line for the CLI, the report header and skip reasons: ``NAME: available, VERSION``
        (``(rootless)``) or ``NAME: unavailable: REASON (fix: HINT)``."""
        if self.available:
            return f"{self.runtime}: available, {self.version}" + (
                " (rootless)" if self.rootless else ""
            )
        return f"{self.runtime}: unavailable: {self.reason}" + (
            f" (fix: {self.hint})" if self.hint else ""
        )


class Container(abc.ABC):
    """A live container. Use as a context manager, or call :meth:`stop`."""

    runtime: str
    id: str
    name: str
    host_pid: int
    spec: ContainerSpec
    engine_rootless: bool

    @abc.abstractmethod
    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Run ``argv`` inside as the container's user, with its confinement; never a shell."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Remove the container and everything made for it. Idempotent."""

    @abc.abstractmethod
    def declared(self) -> Declared:
        """What the engine says it configured (inspect output, nspawn argv), normalized."""

    @abc.abstractmethod
    def logs(self) -> str:
        """The main process's output so far (bounded)."""

    def image_user(self) -> str | None:
        """The image config's USER ("" when it sets none); None when there is no image
        config to read (a runtime without images)."""
        return None

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Run ``argv`` inside as the container's root (uid 0 with the capabilities the
        engine gives a root exec), in the same namespaces, cgroup, seccomp filter and LSM
        label as :meth:`exec`: how the probe takes on another process's identity.
        Raises NotImplementedError (saying why) where the runtime cannot."""
        raise NotImplementedError(f"{self.runtime} has no exec as another user")

    def probe_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Run an applet of the bind-mounted static busybox (``argv[0]`` is the applet)."""
        return self.exec([PROBE_BUSYBOX, *argv], timeout=timeout)

    # -- the container's own probe folder (see probe_copy) ------------------------------

    probe_copy: ProbeCopy | None = None
    # The sandbox between the workload and the host kernel, or None: "gvisor" (runsc)
    # means host_pid is the sandbox's Sentry, not the workload; Facts are then collected
    # from both sides and say which (facts_sandbox).
    sandbox: str | None = None
    # What the host found changed in this container's probe folder (sticky: once
    # modified, nothing the probe reports is trusted again).
    probe_tampered: tuple[str, ...] = ()

    def new_probe_copy(self) -> ProbeCopy:
        """Write this container's fresh probe folder (``probe_copy``, also returned;
        release_probe removes it)."""
        from .probe_copy import ProbeCopy

        copy = self.probe_copy = ProbeCopy.create(self.name)
        return copy

    def check_probe(self) -> tuple[str, ...]:
        """Verify the container's probe folder, host side and as the container sees it;
        returns (and remembers) what was modified from inside, () when intact."""
        if self.probe_copy is not None and not self.probe_tampered:
            # A sandbox's mounts live in its own kernel: /proc/<pid>/root of the Sentry is
            # not what the workload sees, so only the host folder can be verified there.
            pid = self.host_pid if self.sandbox is None else None
            self.probe_tampered = tuple(self.probe_copy.problems(pid or None))
        return self.probe_tampered

    def guard_probe(self) -> None:
        """Before every exec (each goes through the probe's busybox): raise ProbeModified
        when the container modified its probe folder, so its output is never trusted."""
        problems = self.check_probe()
        if problems:
            raise ProbeModified(self.runtime, problems)

    def drop_probe(self) -> None:
        """Remove the probe folder of a container this process gives up on (its engine is
        gone: the container is removed by a later reap); it is never checked again."""
        copy, self.probe_copy = self.probe_copy, None
        if copy is not None:
            copy.remove()

    def release_probe(self) -> None:
        """After the container is gone: a last check (a modification then is still shown
        in the cached Facts), then remove the copy. Idempotent."""
        copy, self.probe_copy = self.probe_copy, None
        if copy is None:
            return
        if not self.probe_tampered:
            self.probe_tampered = tuple(copy.host_problems())
        if self.probe_tampered and self._facts_cache is not None:
            from ..observe.facts import mark_probe_tampered

            self._facts_cache = mark_probe_tampered(self._facts_cache, self.probe_tampered)
        copy.remove()

    _facts_cache: Facts | None = None
    _process_facts: dict[int, Facts] | None = None

    def facts(
        self,
        access: tuple[str, ...] | list[str] = (),
        refresh: bool = False,
        process: ProcessSelector | None = None,
    ) -> Facts:
        """A snapshot of what is in effect: host-side /proc + cgroup files, one exec inside
        (two when the probe takes on the process's identity with setpriv).

        Taken once and cached: every check on this container reads the same snapshot.
        A new snapshot is taken with ``refresh=True`` or when ``access`` names a path not
        probed yet (it then includes every path probed before).

        ``process``: the snapshot of another process than the main one (its identity,
        capabilities, seccomp mode, limits; the probe's verdicts as that process): a pid
        inside the container, a name (``comm``) or a predicate over
        :class:`~pytest_containersec.model.ProcessRecord`, e.g.
        ``process=lambda p: p.comm == "nginx" and p.user.uid != 0``.
        """
        from ..observe.facts import collect

        if process is not None:
            return self._facts_of_process(tuple(access), refresh, process)
        cached = self._facts_cache
        keys = tuple(access)
        if cached is not None and not refresh and all(k in cached.access for k in keys):
            return cached
        if cached is not None:
            keys = tuple(dict.fromkeys((*cached.access, *keys)))
        self._facts_cache = collect(self, access=keys)
        return self._facts_cache

    def _facts_of_process(
        self, access: tuple[str, ...], refresh: bool, process: ProcessSelector
    ) -> Facts:
        from ..linux import processes, procfs
        from ..observe.facts import collect

        uid_map = procfs.read_uid_map(self.host_pid)
        gid_map = procfs.read_gid_map(self.host_pid)
        chosen = processes.select(
            processes.read_processes(self.host_pid, uid_map, gid_map), process
        )
        cache = self._process_facts = self._process_facts or {}
        cached = cache.get(chosen.host_pid)
        keys = tuple(access)
        if cached is not None and not refresh and all(k in cached.access for k in keys):
            return cached
        if cached is not None:
            keys = tuple(dict.fromkeys((*cached.access, *keys)))
        cache[chosen.host_pid] = collect(self, access=keys, process=chosen.pid)
        return cache[chosen.host_pid]

    def probe_access(self, path: str, mode: str = "r") -> AccessResult:
        """Attempt one access as the container's user; returns allowed and the errno name."""
        key = f"{path}:{mode}"
        return self.facts(access=(key,)).access[key]

    @property
    def testinfra(self) -> Any:
        """A testinfra ``Host`` whose commands run through :meth:`exec`."""
        from ..observe.testinfra_backend import host_for

        return host_for(self)

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.runtime} {self.name} pid={self.host_pid}>"


@runtime_checkable
class Runtime(Protocol):
    """One engine. Instances are per process and cheap until used."""

    name: str

    def availability(self) -> Availability:
        """Whether the engine can run containers here, its version, and the fix if not."""
        ...

    def start(self, spec: ContainerSpec) -> Container:
        """Start ``spec``; raise ImageNotFound, UnsupportedSpec or ContainerStartError."""
        ...

    def reap(self) -> int:
        """Remove containers (and their leftovers) of sessions whose process is dead."""
        ...

    def close(self) -> None:
        """Stop this session's containers and any service this process started."""
        ...

    def forget(self, container: Container) -> None:
        """Stop tracking ``container``: close() leaves it running (keep policy); the next
        session's reap() removes it."""
        ...


C = TypeVar("C", bound=Container)


class LiveContainers(Generic[C]):
    """The containers one adapter started in this process and still owns: the bookkeeping
    every runtime shares (register, start with rollback, forget, stop all at close)."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._items: dict[int, C] = {}

    def add(self, c: C) -> C:
        """Track ``c`` (a container whose start succeeded, or is about to be attempted)."""
        with self._lock:
            self._items[id(c)] = c
        return c

    def forget(self, c: Container) -> None:
        """Stop tracking ``c`` (it stopped, or the keep policy leaves it running)."""
        with self._lock:
            self._items.pop(id(c), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def launch(self, c: C, start: Callable[[], object], argv: Callable[[], Sequence[str]]) -> C:
        """Track ``c`` and run ``start``; on any failure stop ``c`` first, so that nothing
        is left (an OSError or SubprocessError becomes ContainerStartError naming ``argv``)."""
        self.add(c)
        try:
            start()
        except BaseException as exc:
            c.stop()
            if isinstance(exc, OSError | subprocess.SubprocessError):
                raise ContainerStartError(self.runtime, list(argv()), None, str(exc)) from None
            raise
        return c

    def stop_all(self, *tolerated: type[BaseException]) -> None:
        """At close: stop each container still tracked (an error of a ``tolerated`` type,
        e.g. its engine is gone, leaves it to the next session's reap) and remove its probe
        folder, which nothing may use once we are gone."""
        with self._lock:
            live = list(self._items.values())
        for c in live:
            with contextlib.suppress(*tolerated):
                c.stop()
            c.drop_probe()
