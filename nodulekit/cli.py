"""The ``nodulekit`` command line: thin entry points to the library.

Exit codes: 0 success, 1 a nodulekit error (bad input, message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import NodulekitError
from .utils import configure_logging

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodulekit", description="Lung-nodule segmentation on CT.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run the notebook series 01-05 (the whole study)")
    rep.add_argument("--run-dir", default="runs/reproduce", help="where results and figures go")
    rep.add_argument("--notebooks", default="notebooks", help="folder of the numbered notebooks")
    rep.add_argument("--quick", action="store_true", help="QUICK mode: tiny data and few epochs")
    rep.add_argument("--in-place", action="store_true", help="write outputs back into the notebooks")
    rep.set_defaults(func=_reproduce)
    return parser


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import run_notebooks

    run_notebooks(args.run_dir, folder=args.notebooks, quick=args.quick, in_place=args.in_place)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except NodulekitError as exc:
        print(f"nodulekit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
