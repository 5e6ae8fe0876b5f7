"""pytest-containersec's ``pytest11`` entry point (``containersec``): the hooks of
:mod:`.hooks`, imported without pytest's assertion rewriting.

pytest rewrites the asserts of every module of an installed plugin's package as it is
imported, and where bytecode is not written (``PYTHONDONTWRITEBYTECODE``, common in CI
images) it parses, rewrites and compiles each of them again in every pytest process and
xdist worker (~24 ms for the hooks and options alone, more for the engines' modules: ~0.35
s of CPU measured for a module on three runtimes). Only this small module still is; the
others raise their own errors (their few ``assert`` statements are invariants for the type
checker). A pytest without the rewriting hook's internals: no change.
"""

from __future__ import annotations

import contextlib
import sys


def _import_plainly() -> None:
    try:
        from _pytest.assertion.rewrite import AssertionRewritingHook
    except ImportError:  # pragma: no cover - another pytest
        return
    package = __name__.split(".", 1)[0]
    for finder in sys.meta_path:
        if isinstance(finder, AssertionRewritingHook):
            with contextlib.suppress(AttributeError, TypeError):
                finder._must_rewrite.discard(package)
                finder._marked_for_rewrite_cache.clear()


_import_plainly()

from .hooks import *  # noqa: E402, F403  (after: imported plainly)
