"""The ``detr`` command line: one sub-command per module of this package.

Each sub-command lives in its own module (``torchdetr/cli/<name>.py``) that defines
``add_parser(subparsers)``; the parser it adds sets ``func`` to the handler, which returns an
exit code. Modules are imported only when needed, so ``detr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command name → module under torchdetr.cli
COMMANDS: dict[str, str] = {
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "visualize": "visualize",
    "plot": "plot",
    "export": "export",
    "data": "data",
    "serve": "serve",
    "info": "info",
}


from ..errors import UserError  # noqa: E402 (re-exported for the command modules)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detr", description="DETR: train, evaluate, predict, inspect, export, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(f"torchdetr.cli.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"torchdetr.cli.{module_name}":
                continue  # command not available in this version
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except (UserError, FileNotFoundError, ValueError, KeyError, NotADirectoryError, PermissionError,
            ModuleNotFoundError, ConnectionError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"detr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
