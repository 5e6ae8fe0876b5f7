"""Run one spec on several runtimes at once and collect Facts (CLI compare / check)."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import ContainerSecError
from ..model import Facts
from ..runtimes import check_names, default_names, get_runtime
from ..spec import ContainerSpec


class RuntimeCrashed(ContainerSecError):
    """A runtime's adapter (or containersec observing it) raised something other than a
    ContainerSecError: a bug, not a verdict. ``trace`` is the formatted traceback."""

    def __init__(self, runtime: str, cause: BaseException) -> None:
        self.runtime = runtime
        self.cause = cause
        self.trace = "".join(traceback.format_exception(cause))
        super().__init__(
            f"{runtime}: unexpected {type(cause).__name__}: {cause} (a bug in the runtime's "
            "adapter or in containersec: nothing was judged; the traceback is on stderr)"
        )


@dataclass(frozen=True)
class Observation:
    """One runtime's result: its Facts, or the error (``unavailable``: the runtime cannot run
    here)."""

    runtime: str
    facts: Facts | None
    error: ContainerSecError | None = None
    unavailable: bool = False


def select(names: Sequence[str] | None, kube: bool = False) -> list[str]:
    """Runtimes by name (when None: every engine runtime of the registry, plus podman-kube
    for a spec read from a Kubernetes manifest); unknown names raise UnknownRuntime."""
    chosen = list(names) if names else list(default_names(kube))
    check_names(chosen)
    return chosen


def observe_one(name: str, spec: ContainerSpec, access: tuple[str, ...]) -> Observation:
    """Start ``spec`` on ``name``, take its Facts with ``access``, remove it; an unavailable
    runtime or a ContainerSecError is returned as the error, not raised. Any other exception
    (an adapter that cannot be made, whose ``availability()`` or ``start()`` raises, a bug
    while observing) is returned as a RuntimeCrashed error naming the runtime and the cause:
    never Facts, so never a pass."""
    try:
        rt = get_runtime(name)
        avail = rt.availability()
        if not avail.available:
            why = f"unavailable: {avail.reason}" + (f" (fix: {avail.hint})" if avail.hint else "")
            return Observation(name, None, ContainerSecError(why), unavailable=True)
        with rt.start(spec) as c:
            return Observation(name, c.facts(access=access))
    except ContainerSecError as exc:
        return Observation(name, None, exc)
    except Exception as exc:  # one runtime's failure must not hide the others' results
        return Observation(name, None, RuntimeCrashed(name, exc))


def observe(
    spec: ContainerSpec, runtimes: Sequence[str], access: tuple[str, ...] = ()
) -> list[Observation]:
    """Start ``spec`` on every runtime in parallel, snapshot it, remove it."""
    with ThreadPoolExecutor(max_workers=max(1, len(runtimes))) as pool:
        return list(pool.map(lambda n: observe_one(n, spec, access), runtimes))


def crashes(observations: Sequence[Observation]) -> list[RuntimeCrashed]:
    """The observations' unexpected errors (print their ``trace`` to stderr: a bug is shown)."""
    return [o.error for o in observations if isinstance(o.error, RuntimeCrashed)]
