"""Which build of the core runs: the ``.py`` files, or the same files compiled with mypyc.

``make test`` runs the whole suite against the source, then the core and pool tests again
against ``build/compiled`` (``make unit-compiled``, with ``TIDEPOOL_EXPECT_COMPILED=1``). This
check keeps each pass honest: the compiled pass must really import extension modules, and the
source pass must never pick up a stale compiled module that would hide an edit.
"""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES

import tidepool._core.deadlines
import tidepool._core.entry
import tidepool._core.state
import tidepool._core.waiter

EXPECT_COMPILED = os.environ.get("TIDEPOOL_EXPECT_COMPILED") == "1"
CORE = (tidepool._core.state, tidepool._core.entry, tidepool._core.deadlines)


def _is_extension(module: object) -> bool:
    path = str(getattr(module, "__file__", ""))
    return any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def test_core_is_compiled_exactly_when_expected() -> None:
    builds = {module.__name__: _is_extension(module) for module in CORE}
    assert builds == dict.fromkeys(builds, EXPECT_COMPILED)


def test_waiter_stays_interpreted_so_the_shells_can_subclass_it() -> None:
    assert not _is_extension(tidepool._core.waiter)
