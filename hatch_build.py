"""Compile tidepool's I/O-free core with mypyc: a wheel build hook, and a script for make.

The core's hot path (``_core/state.py``, ``_core/entry.py``, ``_core/deadlines.py``) is plain,
fully typed Python; compiled to C with mypyc, unchanged, it runs a checkout in about two
thirds of the time. The compiled modules are an accelerator, never a requirement: the same
``.py`` files ship beside them, and an install without a compiled wheel runs them as they
are.

As a build hook (hatchling's ``custom`` hook): ``TIDEPOOL_COMPILE=1 pip wheel .`` builds a
platform wheel with the compiled modules; without the variable every build (including
``pip install -e .``) stays pure Python, so editing the source in a checkout always takes
effect. A compile that was asked for and fails stops the build with mypyc's output.

As a script (``make compiled``): ``python hatch_build.py DIR`` copies ``src/tidepool`` to
``DIR/tidepool`` and compiles the core there; ``PYTHONPATH=DIR`` then imports that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, where hatchling need not be installed
    BuildHookInterface = object  # type: ignore[assignment,misc]

ROOT = Path(__file__).resolve().parent
# Waiter stays interpreted: the shells subclass it, and mypyc classes cannot be subclassed
# by interpreted ones. flows.py likewise (PoolBase subclasses Flows).
# Nothing may take a weak reference to an object of a compiled class: mypyc's deallocator does
# not clear weak references (mypyc/mypyc#1102), and a generic class accepts them, so one would
# crash the process once its object is freed (tests/test_compiled.py checks the pool takes
# none). For the same reason the pools themselves, weakly referenced by design, stay
# interpreted (docs/benchmarks.md, "The shells compiled as they are").
COMPILED = ("tidepool/_core/state.py", "tidepool/_core/entry.py", "tidepool/_core/deadlines.py")
ENV_SWITCH = "TIDEPOOL_COMPILE"

_SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

# The rest of the package is only followed for types: the drivers it imports need not be
# installed where the wheel is built.
ARGS = ["--ignore-missing-imports", "--follow-imports=silent", *{modules!r}]
setup(name="tidepool-core", ext_modules=mypycify(ARGS, opt_level="3", group_name="tidepool_core"))
"""


def compile_core(target: Path) -> list[Path]:
    """Copy ``src/tidepool`` into ``target`` and compile the core there, in place.

    Returns the extension modules built (paths inside ``target``).

    Raises:
        RuntimeError: mypyc or the C compiler failed (the message holds their output).
    """
    package = target / "tidepool"
    if package.exists():
        shutil.rmtree(package)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        ROOT / "src" / "tidepool", package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    for stale in target.glob("*__mypyc*"):
        stale.unlink()
    (target / "setup_core.py").write_text(_SETUP.format(modules=list(COMPILED)))
    done = subprocess.run(
        [sys.executable, "setup_core.py", "build_ext", "--inplace"],
        cwd=target,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    (target / "setup_core.py").unlink()
    shutil.rmtree(target / "build", ignore_errors=True)
    if done.returncode:
        raise RuntimeError(f"compiling tidepool's core with mypyc failed:\n{done.stdout}")
    built = sorted(p for p in target.rglob("*.so") if p.is_file())
    if len(built) < len(COMPILED):
        raise RuntimeError(f"mypyc built {[p.name for p in built]}, expected {COMPILED}")
    return built


class CompileCoreHook(BuildHookInterface):  # type: ignore[misc,valid-type]
    """Adds the compiled core to a wheel when ``TIDEPOOL_COMPILE=1``."""

    PLUGIN_NAME = "custom"

    def _wanted(self, version: str = "standard") -> bool:
        return (
            self.target_name == "wheel"
            and version == "standard"
            and os.environ.get(ENV_SWITCH, "") not in ("", "0")
        )

    def dependencies(self) -> list[str]:
        return ["mypy>=1.10", "setuptools>=68"] if self._wanted() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not self._wanted(version):
            return
        self._workdir = tempfile.mkdtemp(prefix="tidepool-mypyc-")
        target = Path(self._workdir)
        for built in compile_core(target):
            build_data["force_include"][str(built)] = built.relative_to(target).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        workdir = getattr(self, "_workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python hatch_build.py DIR  (compiles the core into DIR/tidepool)")
    try:
        modules = compile_core(Path(sys.argv[1]).resolve())
    except RuntimeError as error:
        sys.exit(str(error))
    print("compiled:", ", ".join(p.name for p in modules))
