"""Entry point of the ``tidepool`` command (subcommands are added by their modules)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from .common import EXIT_CODES_HELP


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tidepool`` argument parser with every subcommand."""
    from . import bench, check

    parser = _Parser(
        prog="tidepool",
        description="tidepool connection pools: size a pool (bench), check a database (check)",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    bench.add_parser(sub)
    check.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        from .. import __version__

        print(__version__)
        return 0
    if args.command == "bench":
        from . import bench

        return bench.run(args)
    if args.command == "check":
        from . import check

        return check.run(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
