"""Policy files collected by pytest: one test item per expectation and runtime.

A file matching ``containersec_policy_files`` (default ``containersec*.yaml
containersec*.yml``) starts its spec once per runtime, takes one snapshot, and judges
each expectation on it, with the same failure messages as ``expect``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..policy.policy import Expectation, Policy
    from .fixtures import Pool

DEFAULT_PATTERNS = "containersec*.yaml containersec*.yml"


def patterns(config: pytest.Config) -> list[str]:
    """The file name patterns of ``containersec_policy_files`` (default ``containersec*.yaml
    containersec*.yml``)."""
    return str(config.getini("containersec_policy_files") or DEFAULT_PATTERNS).split()


def is_policy(config: pytest.Config, path: Path) -> bool:
    """Whether ``path``'s file name (not its directory) matches one of those patterns."""
    return any(fnmatch.fnmatch(path.name, p) for p in patterns(config))


class PolicyFile(pytest.File):
    """A policy file: its spec runs once per runtime, shared by its items."""

    policy: Policy

    def collect(self) -> Iterator[pytest.Item]:
        """One item per expectation and runtime that the policy names and the session selects (a
        repeated expectation name gets ``#N``); with no such runtime, one skipped item per
        expectation that says why. A PolicyError is a collection error."""
        from ..errors import PolicyError
        from ..policy.policy import load
        from .fixtures import state

        st = state(self.config)
        try:  # runtimes: the registry's plus the hook's, as --containersec-runtime
            self.policy = load(self.path, known_runtimes=st.known())
        except PolicyError as exc:
            raise self.CollectError(f"containersec policy error: {exc}") from None
        self._pools: dict[str, Pool] = {}
        selected = st.selected()
        origin = self.policy.spec.origin
        kube = origin is not None and origin.kind == "kube"
        from ..runtimes import MANIFEST_RUNTIMES

        default = [r for r in selected if kube or r not in MANIFEST_RUNTIMES]
        wanted = self.policy.runtimes or default
        runtimes = [r for r in wanted if r in selected]
        names: dict[str, int] = {}
        for exp in self.policy.expectations:
            base = exp.name
            names[base] = names.get(base, 0) + 1
            if names[base] > 1:
                base = f"{base}#{names[base]}"
            for rt in runtimes:
                yield PolicyItem.from_parent(self, name=f"{base}[{rt}]", expectation=exp,
                                             runtime=rt)  # fmt: skip
            if not runtimes:
                item = PolicyItem.from_parent(self, name=f"{base}[no-runtime]", expectation=exp,
                                              runtime=None)  # fmt: skip
                why = f"policy runtimes {list(wanted)} are not selected ({', '.join(selected)})"
                item.add_marker(pytest.mark.skip(reason=why))
                yield item

    def pool(self, runtime: str) -> Pool:
        """This file's container pool on ``runtime``, made on first use and closed with the
        session's."""
        from .fixtures import Pool, state

        if runtime not in self._pools:
            st = state(self.config)
            self._pools[runtime] = pool = Pool(st.runtime(runtime))
            st.pools.append(pool)
        return self._pools[runtime]

    def teardown(self) -> None:
        """Release this file's pools: stop their containers except those the keep policy retains."""
        from .fixtures import state

        st = state(self.config)
        for pool in getattr(self, "_pools", {}).values():
            st.release_pool(pool, later=True)
        self._pools = {}


class PolicyItem(pytest.Item):
    """One expectation of a policy file on one runtime."""

    def __init__(self, *, expectation: Expectation, runtime: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .fixtures import ITEM_KEY, ItemInfo

        self.expectation = expectation
        self.runtime = runtime
        parent = self.parent
        assert isinstance(parent, PolicyFile)
        self.policy_file = parent
        rel = self.nodeid.rsplit("[", 1)[0]
        self.stash[ITEM_KEY] = ItemInfo(runtime, parent.policy.spec, rel)

    def runtest(self) -> None:
        """Start (or reuse) the policy's container, read its Facts with every access the policy
        needs, and judge this expectation: CheckFailed on a finding; a skip when the runtime is
        unavailable or the host kernel lacks the path."""
        from ..expect import CheckFailed
        from .fixtures import state

        assert self.runtime is not None
        st = state(self.config)
        av = st.availability(self.runtime)
        if not av.available:
            pytest.skip(av.line())
        st.install_handlers()
        st.reap_once(self.runtime)
        container = self.policy_file.pool(self.runtime).acquire(self, self.policy_file.policy.spec)
        facts = container.facts(access=self.policy_file.policy.access_keys())
        from ..checks.verdict import split_absent

        findings, absent = split_absent(self.expectation.evaluate(facts))
        if findings:
            from ..checks.facts_read import describe, fields_read

            check = self.expectation.check
            read = fields_read(check.function, facts, check.bind(self.expectation.value))
            raise CheckFailed(findings, describe(facts, read))
        if absent:  # not judged: the host kernel lacks the path (shown as a skip, not a pass)
            pytest.skip("; ".join(str(v) for v in absent))

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        """``FILE:LINE: EXPECTATION`` and the failure's message; pytest's traceback only for an
        unexpected exception."""
        from ..errors import ContainerSecError
        from ..expect import CheckFailed

        where = f"{self.path}:{self.expectation.line}: {self.expectation.name}"
        if isinstance(excinfo.value, CheckFailed | ContainerSecError):
            return f"{where}\n{excinfo.value}"
        return f"{where}\n{super().repr_failure(excinfo)}"

    def reportinfo(self) -> tuple[Path, int, str]:
        """The policy file and the expectation's line, so reports point at where it is written."""
        return self.path, self.expectation.line - 1, self.name
