"""The ``detr`` command line: one sub-command per module of this package.

Each sub-command lives in its own module (``torchdetr/cli/<name>.py``) that defines
``add_parser(subparsers)``; the parser it adds sets ``func`` to the handler, which returns an
exit code. Modules are imported only when needed, so ``detr --help`` stays fast. A command's
``--help`` lists the options it uses: commands built on ``DETRConfig`` pick the option groups they
read with ``torchdetr.config.add_config_arguments(parser, groups=..., include=..., exclude=...)``.

Errors: a ``torchdetr.errors.UserError`` (bad option, data, file, download…) is printed as one line
``detr COMMAND: error: MESSAGE`` with exit code 2; any other exception is a bug and keeps its
traceback (``-v`` shows the traceback of user errors too). ``is_user_error`` is the one rule.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ..errors import UserError

# command name → module under torchdetr.cli (every module must exist: a missing one is an error)
COMMANDS: dict[str, str] = {
    "train": "train",
    "submit": "submit",
    "eval": "evaluate",
    "predict": "predict",
    "track": "track",
    "visualize": "visualize",
    "plot": "plot",
    "export": "export",
    "serve": "serve",
    "data": "data",
    "info": "info",
    "benchmark": "benchmark",
}

USER_ERROR_EXIT_CODE = 2

def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's mistake (one line, exit 2) rather than a bug (traceback)."""
    return isinstance(err, UserError)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``detr`` parser with every command, or with the command ``only`` alone (faster start)."""
    parser = argparse.ArgumentParser(prog="detr", description="DETR: train, evaluate, predict, inspect, export.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"{__name__}.{module_name}").add_parser(subparsers)
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
        return USER_ERROR_EXIT_CODE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except Exception as err:
        if args.verbose or not is_user_error(err):
            raise
        print(f"detr {args.command}: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
