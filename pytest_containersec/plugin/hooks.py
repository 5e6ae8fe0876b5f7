"""pytest-containersec's hooks (what the entry point :mod:`.plugin` registers).

Hooks only: fixtures live in :mod:`pytest_containersec.plugin.fixtures`, options in
:mod:`pytest_containersec.plugin.options`. Engines are imported and probed only when a collected
test uses the container fixtures, so a session without container tests pays nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import options

if TYPE_CHECKING:
    from ..report.matrix import Matrix
    from .session_report import SessionResults

RUNTIME_FIXTURE = "containersec_runtime"
USAGE_ERROR_KEY = pytest.StashKey[str]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _has_state(config: pytest.Config) -> bool:
    from .fixtures import STATE_KEY

    return STATE_KEY in config.stash


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Add ``pytest_containersec_runtime_factories``, the hook that adds, replaces or removes
    runtimes."""
    pluginmanager.add_hookspecs(options.ContainersecHookSpecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--containersec-*`` options and the ``containersec_*`` ini keys."""
    options.register(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, the fixtures and (except on an xdist worker) the matrix hooks; an
    unknown name in ``--containersec-runtime`` is a UsageError."""
    config.addinivalue_line("markers", options.MARKER_LINE)
    settings = options.settings(config)
    from . import fixtures

    config.pluginmanager.register(fixtures, "containersec.fixtures")
    if not _is_worker(config):
        config.pluginmanager.register(ContainersecMatrixHooks(config), "containersec.matrix")
    if settings.runtimes is not None:
        known = fixtures.state(config).known()
        unknown = [n for n in settings.runtimes if n not in known]
        if unknown:
            raise pytest.UsageError(
                f"--containersec-runtime: unknown runtime(s) {', '.join(unknown)} "
                f"(known: {', '.join(known)})"
            )


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    """Collect a YAML file whose name matches ``containersec_policy_files`` as a policy file."""
    if file_path.suffix in (".yaml", ".yml"):
        from .policy_items import PolicyFile, is_policy

        if is_policy(parent.config, file_path):
            return PolicyFile.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses ``containersec_runtime`` once per selected runtime (see
    ``fixtures.parametrize``); their runtimes are made ready from here on, unless some
    tests may be deselected (``-k``, ``-m``, ``--deselect``: then after collection)."""
    if RUNTIME_FIXTURE in metafunc.fixturenames:
        from .fixtures import parametrize

        opt = metafunc.config.option
        selects = any(getattr(opt, n, None) for n in ("keyword", "markexpr", "deselect"))
        parametrize(metafunc, warm_early=_runs_tests(metafunc.config) and not selects)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Validate every ``containersec`` marker and stash each container test's runtime, spec and
    matrix row. Invalid markers are one UsageError; on an xdist worker, which cannot end the
    session, each invalid test errors at setup instead. Then the runtimes those tests use are
    made ready in the background, and a runtime the user named must be available."""
    from .fixtures import ITEM_KEY, ItemInfo, state
    from .options import item_spec, marker_errors

    st = None
    errors: list[str] = []
    container_items = False
    for item in items:
        uses = RUNTIME_FIXTURE in getattr(item, "fixturenames", ())
        if not uses and item.get_closest_marker("containersec") is None:
            continue
        st = st or state(config)
        item_errors = marker_errors(item, st.known())
        errors += item_errors
        if not uses or item_errors:
            continue
        container_items = True
        callspec = getattr(item, "callspec", None)
        runtime = callspec.params.get(RUNTIME_FIXTURE) if callspec else None
        item.stash[ITEM_KEY] = ItemInfo(
            runtime, item_spec(item, st.settings.image), _row_id(item, runtime)
        )
    if errors and st is not None:
        st.usage_error = True
        if not _is_worker(config):
            raise pytest.UsageError("\n".join(dict.fromkeys(errors)))
        # An xdist worker cannot end the session cleanly: each invalid test errors at
        # setup with its message, and the controller turns that into exit status 4.
        for item in items:
            item_errors = marker_errors(item, st.known())
            if item_errors:
                item.stash[USAGE_ERROR_KEY] = "\n".join(item_errors)
    if container_items and st is not None and _runs_tests(config):
        # the runtimes the selected tests use, made ready in the background from here on
        st.warm(dict.fromkeys(i.stash[ITEM_KEY].runtime for i in items if ITEM_KEY in i.stash))
    if container_items and st is not None and not _is_worker(config):
        st.check_named()


def _row_id(item: pytest.Item, runtime: str | None) -> str:
    """``test_x[docker-1]`` -> ``test_x[1]``: the matrix row of this item."""
    base, _, rest = item.nodeid.partition("[")
    if not rest:
        return base
    ids = rest[:-1]
    if runtime:
        for cut in (f"{runtime}-", f"-{runtime}"):
            if ids.startswith(cut) or ids.endswith(cut):
                ids = ids.removeprefix(cut) if ids.startswith(cut) else ids.removesuffix(cut)
                break
        else:
            ids = ids.replace(f"-{runtime}-", "-") if ids != runtime else ""
    return f"{base}[{ids}]" if ids and ids != "no-runtime" else base


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """On the xdist controller, which never collects, check that the runtimes the user named are
    available."""
    config = session.config
    if config.pluginmanager.has_plugin("dsession") and options.settings(config).runtimes_named:
        from .fixtures import state

        state(config).check_named()  # the xdist controller never collects: check here


def _runs_tests(config: pytest.Config) -> bool:
    """This process will run tests (not --collect-only, --fixtures, --setup-plan)."""
    opt = config.option
    return not any(
        getattr(opt, name, False)
        for name in ("collectonly", "showfixtures", "show_fixtures_per_test", "setupplan")
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    """The host's kernel release and cgroup version (not on xdist workers)."""
    if _is_worker(config):
        return None
    from ..linux import hostinfo

    return f"containersec: kernel {hostinfo.kernel()}, cgroup v{hostinfo.cgroup_version()}"


def pytest_report_collectionfinish(
    config: pytest.Config, start_path: Path, items: Sequence[pytest.Item]
) -> list[str]:
    """One line per runtime the collected tests use: available with its version, or why not and
    the fix."""
    from .fixtures import ITEM_KEY, state

    names = {i.stash[ITEM_KEY].runtime for i in items if ITEM_KEY in i.stash}
    st = state(config) if names else None
    if st is None or st.usage_error:
        return []
    used = [n for n in st.selected() if n in names]
    return [f"containersec: {av.line()}" for av in st.availabilities(used)]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test whose marker was invalid (xdist workers), and record the runtime, engine
    version, kernel and cgroup version of a container test as ``user_properties`` (JUnit XML)."""
    from .fixtures import ITEM_KEY, state

    if USAGE_ERROR_KEY in item.stash:
        pytest.fail(item.stash[USAGE_ERROR_KEY], pytrace=False)
    info = item.stash.get(ITEM_KEY, None)
    if info is None or info.runtime is None:
        return
    from ..linux import hostinfo

    st = state(item.config)
    st.current_runtime = info.runtime
    av = st.availability(info.runtime)
    item.user_properties += [
        ("containersec_runtime", info.runtime),
        ("containersec_engine", av.version if av.available else f"unavailable: {av.reason}"),
        ("containersec_kernel", hostinfo.kernel()),
        ("containersec_cgroup", f"v{hostinfo.cgroup_version()}"),
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """After the last test's teardown, wait for the containers stopping in the background
    (``ContainersecState.release_pool``): what a failed stop says goes with its report."""
    try:
        return (yield)
    finally:
        if nextitem is None and _has_state(item.config):
            from .fixtures import STATE_KEY

            item.config.stash[STATE_KEY].join_stops()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach what the controller's matrix and session results read: runtime, matrix row, engine
    version, kept containers, check violations and the Facts the test used. On a failure, mark
    the test's containers as failed (for ``--containersec-keep=failed``) and add the failure
    report's sections."""
    report = yield
    from .fixtures import ITEM_KEY, STATE_KEY

    if USAGE_ERROR_KEY in item.stash and report.when == "setup":
        report.containersec_usage_error = item.stash[USAGE_ERROR_KEY]  # type: ignore[attr-defined]
    st = item.config.stash.get(STATE_KEY, None)
    if st is not None and st.kept and report.when == "teardown":
        report.containersec_kept = st.take_kept()  # type: ignore[attr-defined]
    info = item.stash.get(ITEM_KEY, None)
    if info is None or st is None:
        return report
    report.containersec_runtime = info.runtime or "no-runtime"  # type: ignore[attr-defined]
    report.containersec_test = info.test  # type: ignore[attr-defined]
    av = st.cached_availability(info.runtime) if info.runtime else None
    report.containersec_engine = av.version if av and av.available else ""  # type: ignore[attr-defined]
    if report.when == "call":
        from ..expect import CheckFailed
        from .session_report import facts_payload

        exc = call.excinfo.value if call.excinfo is not None else None
        if isinstance(exc, CheckFailed):
            report.containersec_violations = [  # type: ignore[attr-defined]
                (str(v.check), str(v), v.observed) for v in exc.violations
            ]
        report.containersec_facts = facts_payload(  # type: ignore[attr-defined]
            info, snapshot=st.settings.wants_facts
        )
    if report.failed:
        from ..expect import CheckFailed
        from . import failure_report

        for entry in info.entries:
            entry.failed = True
        if report.when != "teardown":
            exc = call.excinfo.value if call.excinfo is not None else None
            whole = st.settings.keep != "never" or int(item.config.option.verbose) >= 2
            report.sections += failure_report.sections(info, isinstance(exc, CheckFailed), whole)
    if report.when == "teardown":
        st.current_runtime = None
    return report


def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: object, right: object
) -> list[str] | None:
    """Explain ``==`` on Facts, capability sets, cgroups and id maps field by field, headed by
    the runtime under test."""
    from .assertrepr import compare
    from .fixtures import STATE_KEY

    st = config.stash.get(STATE_KEY, None)
    return compare(op, left, right, st.current_runtime if st else None)


class ContainersecMatrixHooks:
    """Builds the session matrix from reports (on the xdist controller or a plain run)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.matrix: Matrix | None = None
        self._results: SessionResults | None = None
        self.strict: list[str] = []
        self.exposure: list[str] = []
        self.usage_errors: dict[str, None] = {}

    @property
    def results(self) -> SessionResults:
        """Made on the first container report: sessions without any pay nothing."""
        if self._results is None:
            from .session_report import SessionResults

            self._results = SessionResults()
        return self._results

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold a container test's report into the matrix and session results, and collect its
        usage error."""
        error = getattr(report, "containersec_usage_error", None)
        if error:
            self.usage_errors[str(error)] = None
        if getattr(report, "containersec_runtime", None) or getattr(
            report, "containersec_kept", None
        ):
            if self.matrix is None:
                from ..report.matrix import Matrix

                self.matrix = Matrix()
            self.matrix.record(report)
            self.results.record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Set the exit status (4 for usage errors; 1 instead of 0 for skipped runs under
        ``--containersec-strict`` or an exposure above ``--containersec-max-exposure``) and
        write the report files and SARIF."""
        if self.usage_errors:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        matrix = self.matrix
        if matrix is None:
            return
        from ..linux import hostinfo, procfs

        matrix.host = {"kernel": hostinfo.kernel(), "cgroup": f"v{hostinfo.cgroup_version()}",
                       "LSM": procfs.read_host_lsm() or "none"}  # fmt: skip
        settings = options.settings(self.config)
        skipped = matrix.skipped()
        if settings.strict and skipped:
            self.strict = [f"{t} [{rt}]: {why}" for t, rt, why in skipped]
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if settings.max_exposure is not None:
            self.exposure = self.results.over_exposure(settings.max_exposure)
            if self.exposure and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if settings.report:
            from .session_report import write

            matrices = self.results.matrices()
            for path in settings.report:
                write(path, matrix, matrices, self.results.facts)
        if settings.sarif is not None:
            from ..report import sarif

            settings.sarif.parent.mkdir(parents=True, exist_ok=True)
            sarif.write(settings.sarif, self.results.check_results(), Path.cwd())

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Show the usage errors, the test x runtime matrix, the notable facts matrices, the
        kept containers, exposure and strict-mode failures, and where reports were written."""
        tr = terminalreporter
        if self.usage_errors:
            tr.write_sep("=", "containersec usage errors (exit status 4)", red=True)
            for error in self.usage_errors:
                tr.write_line(error, red=True)
        matrix = self.matrix
        if matrix is None:
            return
        width = self.config.get_terminal_writer().fullwidth
        if matrix.rows:
            tr.write_sep("=", "containersec matrix")
            for line in matrix.lines(width):
                tr.write_line(line)
        self._facts_matrices(tr, width)
        for message in matrix.kept:
            tr.write_line(f"containersec: {message}", yellow=True)
        if self.exposure:
            limit = options.settings(self.config).max_exposure
            tr.write_sep("=", f"containersec exposure above {limit:g} (exit status 1)", red=True)
            for line in self.exposure:
                tr.write_line(line, red=True)
        if self.strict:
            tr.write_sep("=", "containersec strict mode", red=True)
            tr.write_line(
                f"--containersec-strict: {len(self.strict)} container test run(s) skipped, "
                "so the session fails (exit status 1):",
                red=True,
            )
            for line in self.strict:
                tr.write_line(f"  {line}", red=True)
        settings = options.settings(self.config)
        for path in settings.report:
            tr.write_line(f"containersec: report written to {path}")
        if settings.sarif is not None:
            tr.write_line(f"containersec: SARIF written to {settings.sarif}")

    def _facts_matrices(self, tr: pytest.TerminalReporter, width: int) -> None:
        """The facts matrices of the specs with a failed test or a mismatch (all of them
        with ``-v``), at most three unless ``-v``; one line says what was left out."""
        from ..report import report
        from .session_report import MAX_TERMINAL_MATRICES

        verbose = int(self.config.option.verbose) > 0
        every = self.results.matrices()
        shown = every if verbose else self.results.matrices(notable_only=True)
        quiet_ones = len(every) - len(shown)
        if not verbose and len(shown) > MAX_TERMINAL_MATRICES:
            shown = shown[:MAX_TERMINAL_MATRICES]
        for m in shown:
            tr.write_sep("-", f"containersec facts: {m.title}")
            for line in report.to_text(m, width).splitlines()[1:]:
                tr.write_line(line)
        left_out = len(every) - len(shown)
        if left_out:
            more = left_out - quiet_ones
            why = ", ".join(
                ([f"{quiet_ones} without a failed test or a mismatch"] if quiet_ones else [])
                + ([f"{more} beyond the first {MAX_TERMINAL_MATRICES}"] if more else [])
            )
            from ..report.termtable import wrap

            where = "" if options.settings(self.config).report else (
                ", --containersec-report=FILE.html writes them")  # fmt: skip
            text = f"containersec: {left_out} facts matrix(es) not shown ({why}): -v shows them"
            for line in wrap(text + where, width, "    "):
                tr.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop every pooled container (the keep policy applies) and every runtime this process used."""
    if _has_state(config):
        from .fixtures import STATE_KEY

        config.stash[STATE_KEY].close()
        del config.stash[STATE_KEY]
    if "pytest_containersec.runtimes" in sys.modules:
        from ..runtimes import close_all

        close_all()
