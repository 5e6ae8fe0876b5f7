"""One exception root; every subclass carries data and says what to do."""

from __future__ import annotations

from collections.abc import Sequence


class ContainerSecError(Exception):
    """Root of every error raised by pytest-containersec."""


class SpecError(ContainerSecError, ValueError):
    """A ContainerSpec (or marker, CLI flag, policy entry) has an invalid value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field}={value!r}: {reason}")


class UnsupportedSpec(ContainerSecError):
    """The runtime cannot express this spec field to its engine (never silently dropped)."""

    def __init__(self, field: str, runtime: str, reason: str = "") -> None:
        self.field = field
        self.runtime = runtime
        self.reason = reason
        msg = f"{runtime}: spec field {field!r} is not supported"
        super().__init__(f"{msg}: {reason}" if reason else msg)


class UnknownRuntime(ContainerSecError, ValueError):
    """A runtime name that no adapter has (a usage error: exit status 2 in the CLI)."""

    def __init__(self, names: Sequence[str], known: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(f"unknown runtime(s) {', '.join(names)}; known: {', '.join(known)}")


class RuntimeUnavailable(ContainerSecError):
    """The runtime is not installed, not running or not usable; ``hint`` says how to fix it."""

    def __init__(self, runtime: str, reason: str, hint: str = "") -> None:
        self.runtime = runtime
        self.reason = reason
        self.hint = hint
        msg = f"{runtime} is unavailable: {reason}"
        super().__init__(f"{msg} (fix: {hint})" if hint else msg)


class ImageNotFound(ContainerSecError):
    """The image is not in the runtime's local store (nothing is ever pulled)."""

    def __init__(self, runtime: str, image: str, hint: str = "") -> None:
        self.runtime = runtime
        self.image = image
        self.hint = hint or "build or import it locally; pytest-containersec never pulls"
        super().__init__(f"{runtime}: image {image!r} not found locally ({self.hint})")


class ContainerStartError(ContainerSecError):
    """The engine refused to start the container, or it exited at once."""

    def __init__(
        self, runtime: str, argv: Sequence[str], exit_status: int | None, stderr: str
    ) -> None:
        self.runtime = runtime
        self.argv = list(argv)
        self.exit_status = exit_status
        self.stderr = stderr
        tail = stderr.strip()[-2000:]
        status = "refused by the engine" if exit_status is None else f"exit status {exit_status}"
        super().__init__(
            f"{runtime}: container failed to start ({status}): "
            f"{tail or '(no output)'}\n  command/spec: {' '.join(self.argv)}"
        )


class ExecTimeout(ContainerSecError):
    """A command inside the container did not finish within its timeout (it was killed)."""

    def __init__(self, runtime: str, argv: Sequence[str], timeout: float) -> None:
        self.runtime = runtime
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__(f"{runtime}: exec {list(argv)!r} timed out after {timeout:g}s")


class ProbeParseError(ContainerSecError, ValueError):
    """A /proc, cgroup or probe output could not be parsed; never guessed around."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"cannot parse {source}: {reason}")


class ProbeError(ContainerSecError):
    """Facts could not be collected from a container (it exited, its /proc vanished, ...)."""

    def __init__(self, runtime: str, reason: str) -> None:
        self.runtime = runtime
        self.reason = reason
        super().__init__(f"{runtime}: cannot observe the container: {reason}")


class ProbeModified(ProbeError):
    """The container modified its probe folder: no exec goes through it any more."""

    def __init__(self, runtime: str, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            runtime,
            "the probe was modified from inside (" + "; ".join(self.problems) + "); nothing "
            "is executed through it any more: a container that can remount /.containersec "
            "(root with CAP_SYS_ADMIN and no user namespace) could forge what it reports",
        )


class PolicyError(ContainerSecError):
    """A policy file is malformed; names file, line and key."""

    def __init__(self, path: str, line: int | None, key: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {reason}")


class SourceError(ContainerSecError, ValueError):
    """A deployment file (compose, Kubernetes manifest, quadlet, unit) cannot become a
    ContainerSpec: it does not parse, names no such service/container, or uses a field
    that containersec does not support. Names file, line and field; nothing is dropped."""

    def __init__(self, path: str, line: int | None, key: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {reason}")
