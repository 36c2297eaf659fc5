"""Entry point of the ``tidepool`` command (subcommands are added by their modules)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidepool", description="tidepool connection pools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        from .. import __version__

        print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
