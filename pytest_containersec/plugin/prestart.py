"""Concurrent starts: every container a reuse scope's tests will need, started together.

At the first container request of a scope (a module by default, ``--containersec-reuse``),
the plugin looks at the collected tests of that scope, and starts each (runtime, spec)
that ``containersec_container`` will ask for, ``--containersec-parallel`` at a time, each
on its own runtime's terms (reaping that runtime's dead sessions first, as the runtime
fixture does), and takes each one's snapshot right away. A test then gets its container
from here, or the error its start raised: a failed start fails only the tests that use it.
Containers nobody took are stopped when their scope ends, concurrently like the rest.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..runtimes.base import Container, Runtime
    from ..spec import ContainerSpec

Key = tuple[str, str, "ContainerSpec"]  # scope key, runtime name, spec


def scope_key(item: pytest.Item, reuse: str) -> str | None:
    """The node id of ``item``'s reuse scope ("" = the session), None for per-test reuse."""
    if reuse == "session":
        return ""
    node: pytest.Item | pytest.Collector | None = None
    if reuse == "class":
        node = item.getparent(pytest.Class)
    if reuse in ("module", "class") and node is None:
        node = item.getparent(pytest.Module)
    return node.nodeid if node is not None else None


class Prestart:
    """Per process: the futures of containers started ahead, by scope, runtime and spec."""

    def __init__(self, parallel: int, runtime: Callable[[str], Runtime | None]) -> None:
        self.parallel = parallel
        self._runtime = runtime  # a runtime by name, reaped and available, or None
        self._futures: dict[Key, Future[Container]] = {}
        self._planned: set[str] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="containersec")
        return self._pool

    def planned(self, scope: str) -> bool:
        """Whether the starts ahead of ``scope`` were already planned."""
        with self._lock:
            return scope in self._planned

    def plan(self, scope: str, wanted: Iterable[tuple[str, ContainerSpec]]) -> None:
        """Start, once per scope, each (runtime, spec) in ``wanted`` (first come first)."""
        if self.parallel < 2:
            return
        with self._lock:
            if scope in self._planned:
                return
            self._planned.add(scope)
            for name, spec in dict.fromkeys(wanted):
                key = (scope, name, spec)
                if key not in self._futures:
                    self._futures[key] = self._executor().submit(self._start, name, spec)

    def _start(self, name: str, spec: ContainerSpec) -> Container:
        rt = self._runtime(name)
        if rt is None:
            raise LookupError(name)  # unavailable: the test's own fixture skips it
        container = rt.start(spec)
        with contextlib.suppress(Exception):  # a failing snapshot is the test's to report
            container.facts()
        return container

    def ahead(self, fn: Callable[[str], object], name: str) -> None:
        """Run ``fn(name)`` in the background (a runtime's warm-up; it never raises);
        close() waits for it."""
        if self.parallel >= 2:
            self._executor().submit(fn, name)

    def take(self, scope: str, name: str, spec: ContainerSpec) -> Container | None:
        """The container started ahead for this test (its start's error is raised here),
        or None when there is none."""
        with self._lock:
            future = self._futures.pop((scope, name, spec), None)
        if future is None:
            return None
        try:
            return future.result()
        except LookupError:
            return None

    def discard(self, scope: str, name: str | None = None) -> None:
        """Stop what was started ahead for ``scope`` (and runtime ``name``) and not taken."""
        with self._lock:
            keys = [k for k in self._futures if k[0] == scope and name in (None, k[1])]
            futures = [self._futures.pop(k) for k in keys]
        stop_all(self.parallel, [_stopper(f) for f in futures])

    def close(self) -> None:
        """Stop everything not taken; no more starts."""
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
            pool, self._pool = self._pool, None
        stop_all(self.parallel, [_stopper(f) for f in futures])
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _stopper(future: Future[Container]) -> Callable[[], None]:
    def stop() -> None:
        if future.cancel():
            return
        with contextlib.suppress(Exception):
            future.result().stop()

    return stop


def stop_all(parallel: int, stops: list[Callable[[], None]]) -> None:
    """Run ``stops`` (each never raises) ``parallel`` at a time; return when all are done."""
    if len(stops) < 2 or parallel < 2:
        for stop in stops:
            stop()
        return
    with ThreadPoolExecutor(min(parallel, len(stops)), thread_name_prefix="containersec") as ex:
        for f in [ex.submit(stop) for stop in stops]:
            f.result()
