"""The plugin's fixtures and the per-process state behind them (runtimes, container pools).

Engines are imported and contacted only when a test uses one of these fixtures.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from ..spec import SPEC_FIELDS, ContainerSpec
from . import options
from .options import marker_fields
from .prestart import Prestart, stop_all
from .prestart import scope_key as prestart_scope

if TYPE_CHECKING:
    from ..model import Facts
    from ..runtimes.base import Availability, Container, Runtime

STATE_KEY = pytest.StashKey["ContainersecState"]()
ITEM_KEY = pytest.StashKey["ItemInfo"]()
RUNTIME_FIXTURE = "containersec_runtime"
KEEP_COMMANDS = {"docker": "docker rm -f {name}", "podman": "podman rm -f {name}"}


class Entry:
    """A pooled container and the tests that used it."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.tests: list[str] = []
        self.failed = False
        self._facts_dict: tuple[Facts, dict[str, Any]] | None = None

    def facts_dict(self, facts: Facts) -> dict[str, Any]:
        """``facts.to_dict()``, made once per snapshot: every test report of this container
        carries it (read-only)."""
        if self._facts_dict is None or self._facts_dict[0] is not facts:
            self._facts_dict = (facts, facts.to_dict())
        return self._facts_dict[1]


class ItemInfo:
    """What the plugin knows about one container test (stashed on the item)."""

    def __init__(self, runtime: str | None, spec: ContainerSpec, test: str) -> None:
        self.runtime = runtime
        self.spec = spec
        self.test = test  # node id without the runtime's parameter id: the matrix row
        self.entries: list[Entry] = []
        self.slots: Counter[ContainerSpec] = Counter()


class ContainersecState:
    """Per process: runtimes resolved by name, their availability, open pools, cleanup."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.settings = options.settings(config)
        self._factories: dict[str, options.RuntimeFactory] | None = None
        self._runtimes: dict[str, Runtime] = {}
        self._availability: dict[str, Availability] = {}
        self._reaped: set[str] = set()
        self._warmed: set[str] = set()
        self._reap_errors: dict[str, Exception] = {}  # a reap ahead failed: the next use raises
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self.pools: list[Pool] = []
        self.kept: list[str] = []  # messages not yet attached to a report (say/take_kept)
        self.current_runtime: str | None = None
        self.usage_error = False
        self._old_sigterm: Any = None
        self._handlers = False
        self._lock = threading.RLock()
        self._prestart: Prestart | None = None
        self._stopper: ThreadPoolExecutor | None = None
        self._stopping: list[Future[None]] = []

    # -- runtimes ----------------------------------------------------------------------

    def factories(self) -> dict[str, options.RuntimeFactory]:
        """Runtime name -> factory: the registry's, updated by the results of
        ``pytest_containersec_runtime_factories`` (a None factory removes the name); made once."""
        if self._factories is None:
            from ..runtimes import known_names

            found: dict[str, options.RuntimeFactory | None] = {
                name: _registry_factory(name) for name in known_names()
            }
            hook = self.config.hook.pytest_containersec_runtime_factories
            for extra in reversed(hook(config=self.config)):
                found.update(extra or {})
            self._factories = {k: v for k, v in found.items() if v is not None}
        return self._factories

    def known(self) -> tuple[str, ...]:
        """Every runtime name this session can use: the registry's and the hook's."""
        return tuple(self.factories())

    def selected(self) -> tuple[str, ...]:
        """The runtimes asked for; by default every one but the ENGINE:OCI variants and the
        engines of some hosts only (``runtimes.OPTIONAL_NAMES``: incus), run when named."""
        from ..runtimes import OPTIONAL_NAMES

        if self.settings.runtimes:
            return self.settings.runtimes
        return tuple(n for n in self.known() if ":" not in n and n not in OPTIONAL_NAMES)

    def runtime(self, name: str) -> Runtime:
        """The adapter of ``name``, made on first use and shared by this process's tests."""
        with self._lock_of("runtime", name):  # not the state's lock: imports take a while
            with self._lock:
                if name in self._runtimes:
                    return self._runtimes[name]
                factory = self.factories()[name]
            made = factory()
            with self._lock:
                self._runtimes[name] = made
            return made

    def availabilities(self, names: Iterable[str]) -> list[Availability]:
        """Each runtime's availability, asked concurrently (each may contact an engine)."""
        names = list(names)
        if len(names) < 2 or self.settings.parallel < 2:
            return [self.availability(n) for n in names]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(names), self.settings.parallel)) as ex:
            return list(ex.map(self.availability, names))

    def availability(self, name: str) -> Availability:
        """Whether ``name`` can run here, asked once and cached; an adapter that is not
        installed or raises is reported unavailable with the reason, never a crash."""
        from ..runtimes.base import Availability

        with self._lock_of("availability", name):
            if name not in self._availability:
                try:
                    av = self.runtime(name).availability()
                except ImportError as exc:
                    av = Availability(name, False, reason=f"adapter not installed ({exc})")
                except Exception as exc:  # an adapter must report, never crash the session
                    av = Availability(name, False, reason=f"{type(exc).__name__}: {exc}")
                self._availability[name] = av
            return self._availability[name]

    def _lock_of(self, what: str, name: str) -> threading.Lock:
        """One lock per (step, runtime): a second caller waits for the first's result."""
        with self._lock:
            return self._locks.setdefault((what, name), threading.Lock())

    def cached_availability(self, name: str) -> Availability | None:
        """The availability already asked for ``name``, or None; never contacts an engine."""
        return self._availability.get(name)

    def check_named(self) -> None:
        """A runtime the user named must be available: UsageError with reason and fix."""
        if not self.settings.runtimes_named:
            return
        bad = [self.availability(n) for n in self.selected()]
        bad = [av for av in bad if not av.available]
        if bad:
            lines = [f"--containersec-runtime {av.line()}" for av in bad]
            raise pytest.UsageError("\n".join(lines))

    def reap_once(self, name: str, ahead: bool = False) -> None:
        """Remove what dead sessions left on ``name`` (serialized between xdist workers); a
        second caller waits for the first. ``ahead`` (a warm-up): a failure is kept and
        raised to the next caller, the first that starts a container."""
        import fcntl
        import tempfile

        from ..runtimes import probe_copy

        with self._lock_of("reap", name):
            if name in self._reaped:
                error = self._reap_errors.pop(name, None)
                if error is not None:
                    raise error
                return
            self._reaped.add(name)
            lock = Path(tempfile.gettempdir()) / f"containersec-reap-{name}.lock"
            with open(lock, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    self.runtime(name).reap()
                    probe_copy.reap()  # probe folders of dead sessions, whatever their runtime
                except Exception as exc:
                    if not ahead:
                        raise
                    self._reap_errors[name] = exc
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    # -- cleanup -------------------------------------------------------------------------

    def install_handlers(self) -> None:
        """atexit + SIGTERM (raised as KeyboardInterrupt so fixtures tear down)."""
        if self._handlers:
            return
        import atexit
        import signal

        self._handlers = True
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)

    # -- concurrent starts ---------------------------------------------------------------

    @property
    def prestart(self) -> Prestart:
        """The starter of containers ahead of their tests (``--containersec-parallel``), made on
        first use."""
        with self._lock:
            if self._prestart is None:
                self._prestart = Prestart(self.settings.parallel, self._ready_runtime)
            return self._prestart

    def _ready_runtime(self, name: str, ahead: bool = False) -> Runtime | None:
        """For a start ahead: the runtime, reaped once, or None when it is unavailable."""
        if not self.availability(name).available:
            return None
        self.reap_once(name, ahead)
        return self.runtime(name)

    def warm(self, names: Iterable[str | None]) -> None:
        """Make these runtimes (those of the collected container tests) ready in the
        background, ``--containersec-parallel`` at a time, before the first test asks: each
        one's availability, its reap and its engine client (Podman: the API service this
        process starts and its first answer, ~0.35 s). A reap's failure is raised to the first
        test that starts a container there."""
        if self.settings.parallel < 2:
            return
        self.install_handlers()
        for name in names:
            with self._lock:
                if name is None or name in self._warmed:
                    continue
                self._warmed.add(name)
            self.prestart.ahead(self._warm_one, name)

    def _warm_one(self, name: str) -> None:
        self._ready_runtime(name, ahead=True)  # the reap connects the engine's client

    def plan_scope(self, item: pytest.Item, scope: str) -> None:
        """Start ahead what the tests of ``item``'s reuse scope will ask for."""
        if self.settings.parallel < 2 or self.prestart.planned(scope):
            return
        wanted = []
        for other in item.session.items:
            info = other.stash.get(ITEM_KEY, None)
            if info is None or info.runtime is None or other.get_closest_marker("skip"):
                continue
            if "containersec_container" not in getattr(other, "fixturenames", ()):
                continue
            if prestart_scope(other, self.settings.reuse) == scope:
                wanted.append((info.runtime, info.spec))
        self.prestart.plan(scope, wanted)

    # -- stopping ------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A message about a container kept or not stopped, for the next teardown report."""
        with self._lock:
            self.kept.append(message)

    def take_kept(self) -> list[str]:
        """The messages said since the last call."""
        with self._lock:
            out, self.kept = self.kept, []
        return out

    def release_pool(self, pool: Pool, later: bool = False) -> None:
        """Stop ``pool``'s containers (the keep policy applies). ``later``: in the background,
        ``--containersec-parallel`` at a time, while the next tests run (a stop costs 0.1-0.3
        s and nothing waits for it); :meth:`join_stops` waits for them, at the end of the
        last test's teardown and at the session's end."""
        with self._lock:
            if pool not in self.pools:
                return
            self.pools.remove(pool)
        for message in pool.release(self.settings.keep, later):
            self.say(message)

    def stop_later(self, stops: list[Callable[[], None]]) -> None:
        """Run ``stops`` (each never raises) in the background; see :meth:`release_pool`."""
        with self._lock:
            if self._stopper is None:
                self._stopper = ThreadPoolExecutor(
                    self.settings.parallel, thread_name_prefix="containersec-stop"
                )
            self._stopping += [self._stopper.submit(stop) for stop in stops]

    def join_stops(self) -> None:
        """Wait for the stops running in the background."""
        while True:
            with self._lock:
                pending, self._stopping = self._stopping, []
            if not pending:
                return
            for future in pending:
                future.result()

    def close(self) -> None:
        """Stop every container still pooled (keep policy applies) and every runtime."""
        with self._lock:
            prestart, self._prestart = self._prestart, None
        if prestart is not None:
            prestart.close()  # first: a warm-up still running may yet make a runtime
        for pool in list(self.pools):
            self.release_pool(pool)
        self.join_stops()
        with self._lock:
            stopper, self._stopper = self._stopper, None
            runtimes, self._runtimes = self._runtimes, {}
        if stopper is not None:
            stopper.shutdown(wait=True)
        for rt in runtimes.values():
            with contextlib.suppress(Exception):
                rt.close()
        if self._handlers:
            import atexit
            import signal

            self._handlers = False
            atexit.unregister(self.close)
            if self._old_sigterm is not None and (
                threading.current_thread() is threading.main_thread()
            ):
                signal.signal(signal.SIGTERM, self._old_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum} (SIGTERM): stopping containers")


def _registry_factory(name: str) -> options.RuntimeFactory:
    def make() -> Runtime:
        from ..runtimes import get_runtime

        return get_runtime(name)

    return make


def item_info(item: pytest.Item) -> ItemInfo:
    """The item's ItemInfo (made at collection; made here for a fixture requested late)."""
    info = item.stash.get(ITEM_KEY, None)
    if info is None:
        from .options import item_spec

        image = state(item.config).settings.image
        info = item.stash[ITEM_KEY] = ItemInfo(None, item_spec(item, image), item.nodeid)
    return info


def state(config: pytest.Config) -> ContainersecState:
    """This session's ContainersecState, kept in ``config.stash`` and made on first use."""
    found = config.stash.get(STATE_KEY, None)
    if found is None:
        found = config.stash[STATE_KEY] = ContainersecState(config)
    return found


class Pool:
    """Containers of one runtime shared within one reuse scope, by (spec, slot)."""

    def __init__(
        self, runtime: Runtime, scope: str | None = None, st: ContainersecState | None = None
    ) -> None:
        self.runtime = runtime
        self.scope = scope  # the reuse scope's node id; None: no starts ahead
        self.state = st
        self.entries: dict[tuple[ContainerSpec, int], Entry] = {}

    def acquire(self, item: pytest.Item, spec: ContainerSpec, ahead: bool = False) -> Container:
        """The container of ``spec`` for ``item``: a test's n-th use of one spec gets the n-th
        container of it, shared with the scope's other tests; started here or taken from the
        starts ahead. An UnsupportedSpec skips the test; an ImageNotFound for a spec read from a
        deployment file fails it naming the file and line."""
        from ..errors import ImageNotFound, UnsupportedSpec

        info = item_info(item)
        slot = info.slots[spec]
        info.slots[spec] += 1
        entry = self.entries.get((spec, slot))
        if entry is None:
            try:
                container = None
                if ahead and slot == 0 and self.scope is not None and self.state is not None:
                    self.state.plan_scope(item, self.scope)
                    container = self.state.prestart.take(self.scope, self.runtime.name, spec)
                if container is None:
                    container = self.runtime.start(spec)
            except UnsupportedSpec as exc:
                pytest.skip(str(exc))
            except ImageNotFound as exc:
                if spec.origin is None:
                    raise
                pytest.fail(f"{spec.origin.where()}: image: {exc}", pytrace=False)
            entry = self.entries[(spec, slot)] = Entry(container)
        entry.tests.append(item.nodeid)
        info.entries.append(entry)
        return entry.container

    def release(self, keep: str, later: bool = False) -> list[str]:
        """Stop the containers, except those the keep policy retains; the messages about
        those kept and those that could not be stopped. ``later``: the stops run in the
        background (:meth:`ContainersecState.stop_later`), their messages said to the state."""
        kept: list[str] = []
        entries, self.entries = list(self.entries.values()), {}
        st = self.state
        background = later and st is not None and st.settings.parallel >= 2
        say = st.say if background and st is not None else kept.append
        stops = []
        for e in entries:
            c = e.container
            if keep == "always" or (keep == "failed" and e.failed):
                self.runtime.forget(c)
                kept.append(keep_message(e))
                continue
            stops.append(_quiet_stop(c, say))
        if self.scope is not None and st is not None:
            st.prestart.discard(self.scope, self.runtime.name)
        if background and st is not None:
            st.stop_later(stops)
        else:
            stop_all(st.settings.parallel if st is not None else 1, stops)
        return kept


def _quiet_stop(c: Container, say: Callable[[str], None]) -> Callable[[], None]:
    """Stop ``c``; a failure does not fail the test that used it, but is said (shown like a
    kept container's message) and left to the next session's reap."""

    def stop() -> None:
        try:
            c.stop()
        except Exception as exc:  # any engine error: report it, never raise
            say(
                f"[{c.runtime}] could not stop container {c.name} (host pid {c.host_pid}): "
                f"{exc}; the next session's reap removes it"
            )

    return stop


def keep_message(e: Entry) -> str:
    """The message about a kept container: name, id, host pid, the tests that used it, and how
    to remove it."""
    c = e.container
    how = KEEP_COMMANDS.get(c.runtime, "")
    remove = f"remove it with `{how.format(name=c.name)}`, or " if how else ""
    tests = ", ".join(e.tests[:3]) + (f" (+{len(e.tests) - 3} more)" if len(e.tests) > 3 else "")
    why = "failed test" if e.failed else "test"
    return (
        f"[{c.runtime}] kept container {c.name} (id {c.id[:12]}, host pid {c.host_pid}) "
        f"of {why} {tests}; {remove}the next containersec session reaps it"
    )


def parametrize(metafunc: pytest.Metafunc, warm_early: bool) -> None:
    """Parametrize ``containersec_runtime`` (indirect, session scope) for one test;
    ``warm_early``: make its runtimes ready in the background right away (see
    :meth:`ContainersecState.warm`), not after collection."""
    st = state(metafunc.config)
    selected = st.selected()
    wanted = marker_fields(metafunc.definition).get("runtimes")
    names = list(selected)
    if isinstance(wanted, list | tuple) and all(isinstance(n, str) for n in wanted):
        names = [n for n in selected if n in wanted]
    else:  # a runtime that runs manifests only: for tests whose spec is read from one
        names = [n for n in names if n not in _manifest_runtimes(metafunc)]
    if names:
        params = [pytest.param(n, id=n) for n in names]
    else:
        why = f"containersec(runtimes={wanted!r}): none of them is selected ({', '.join(selected)})"
        params = [pytest.param(None, id="no-runtime", marks=pytest.mark.skip(reason=why))]
    metafunc.parametrize(RUNTIME_FIXTURE, params, indirect=True, scope="session")
    if warm_early:
        st.warm(names)  # while the rest is collected (Podman's service takes ~0.4 s)


def _manifest_runtimes(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    """The manifest-only runtimes this test's spec cannot run on (all of them unless the
    spec was read from a Kubernetes manifest)."""
    from ..runtimes import MANIFEST_RUNTIMES
    from .options import item_spec

    try:
        spec = item_spec(metafunc.definition, state(metafunc.config).settings.image)
    except (ValueError, TypeError):
        return MANIFEST_RUNTIMES  # the marker's usage error is reported at collection
    return () if spec.origin is not None and spec.origin.kind == "kube" else MANIFEST_RUNTIMES


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def containersec_runtime(request: pytest.FixtureRequest) -> Runtime:
    """The runtime (engine adapter) this test runs on; session scope.

    Tests that use it, ``containersec_container`` or ``containersec_start`` run once per
    selected runtime, with ids ``[docker]``, ``[podman]``, ``[podman-rootless]``,
    ``[nspawn]`` (``--containersec-runtime``; ``@pytest.mark.containersec(runtimes=[...])``
    narrows it). An unavailable runtime skips its tests with the reason and the fix.
    """
    st = state(request.config)
    name = getattr(request, "param", None)
    if name is None:
        name = st.selected()[0]
    av = st.availability(name)
    if not av.available:
        pytest.skip(av.line())
    st.install_handlers()
    st.reap_once(name)
    return st.runtime(name)


@pytest.fixture(scope=options.reuse_scope)
def _containersec_pool(
    containersec_runtime: Runtime, request: pytest.FixtureRequest
) -> Iterator[Pool]:
    """Containers shared within the ``--containersec-reuse`` scope (default: module)."""
    st = state(request.config)
    scope = request.node.nodeid if st.settings.reuse != "function" else None
    pool = Pool(containersec_runtime, scope, st)
    st.pools.append(pool)
    yield pool
    st.release_pool(pool, later=True)


@pytest.fixture
def containersec_container(request: pytest.FixtureRequest, _containersec_pool: Pool) -> Container:
    """The container of the nearest ``@pytest.mark.containersec(...)``, on this runtime.

    Started once per spec and runtime within the ``--containersec-reuse`` scope (default:
    module) and shared by the tests of that scope with an identical spec; stopped when the
    scope ends (``--containersec-keep`` may keep it). Without a marker: the default image.
    """
    item = request.node
    return _containersec_pool.acquire(item, item_info(item).spec, ahead=True)


class ContainersecStart:
    """``containersec_start(image=..., **spec) -> Container``: start more containers."""

    def __init__(self, item: pytest.Item, pool: Pool, image: str) -> None:
        self._item = item
        self._pool = pool
        self._image = image

    def __call__(self, image: str | None = None, **spec: Any) -> Container:
        """Start a container of ``image`` (default: ``--containersec-image``) with these
        ContainerSpec fields (``user=``, ``cap_drop=``, ``memory=``, ...) on this runtime."""
        unknown = sorted(set(spec) - set(SPEC_FIELDS))
        if unknown:
            raise TypeError(
                f"containersec_start(): unknown spec field(s) {', '.join(unknown)} "
                f"(known: {', '.join(SPEC_FIELDS)})"
            )
        full = ContainerSpec(**{**spec, "image": image or self._image})
        return self._pool.acquire(self._item, full)


@pytest.fixture
def containersec_start(
    request: pytest.FixtureRequest, _containersec_pool: Pool
) -> ContainersecStart:
    """Factory for several containers in one test, on this test's runtime::

        def test_two(containersec_start):
            a = containersec_start(user="1000", cap_drop=["ALL"])
            b = containersec_start(image="myapp:1.4", read_only=True)

    Each call takes keyword ContainerSpec fields and returns a started Container. All of
    them are stopped when the ``--containersec-reuse`` scope ends (default: module; equal
    specs are shared by the tests of that scope, but never twice within one test).
    """
    return ContainersecStart(request.node, _containersec_pool, state(request.config).settings.image)
