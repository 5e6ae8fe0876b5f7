"""What observation needs of a running container, and the probe's fixed places in it.

The observers read a container through this Protocol only; every runtime's
:class:`~pytest_containersec.runtimes.base.Container` fulfils it. So observation sits below
the runtimes: a runtime builds on it, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..model import Declared
from ..spec import ContainerSpec

# Where the host's static busybox is bind-mounted read-only in every container: the probe
# never depends on the image's own shell or tools (distroless, scratch, faked /bin/sh).
PROBE_DIR = "/.containersec"
PROBE_BUSYBOX = f"{PROBE_DIR}/busybox"
DEFAULT_EXEC_TIMEOUT = 30.0
MAX_OUTPUT = 8 * 1024 * 1024  # bytes kept of an exec's stdout and of its stderr


@dataclass(frozen=True)
class ExecResult:
    """One command's exit status and (bounded) output."""

    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Exit status 0."""
        return self.rc == 0


class ProbeTools(Protocol):
    """The container's own probe folder, as far as observation writes to it."""

    def add_tools(self) -> None:
        """Add the host's setpriv (and its libraries) for taking on another identity."""


class Target(Protocol):
    """A live container as the observers see it (see runtimes.base.Container)."""

    runtime: str
    name: str
    host_pid: int
    spec: ContainerSpec
    engine_rootless: bool
    sandbox: str | None

    @property
    def probe_copy(self) -> ProbeTools | None:
        """The container's probe folder, or None (a runtime without one)."""

    def exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Run ``argv`` inside as the container's user."""

    def root_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Run ``argv`` inside as the container's root, same confinement otherwise."""

    def probe_exec(self, argv: list[str], timeout: float = DEFAULT_EXEC_TIMEOUT) -> ExecResult:
        """Run an applet of the probe's busybox."""

    def check_probe(self) -> tuple[str, ...]:
        """What was modified in the probe folder, () when intact."""

    def declared(self) -> Declared:
        """What the engine says it configured, normalized."""

    def logs(self) -> str:
        """The main process's output so far (bounded)."""

    def image_user(self) -> str | None:
        """The image config's USER, or None without an image config."""
