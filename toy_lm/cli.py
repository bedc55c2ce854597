"""``harm-horizon``: the command-line entry point.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; this module only assembles them, turns float64 on, and turns every
:class:`~toy_lm.errors.HarmHorizonError` into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from toy_lm.errors import HarmHorizonError

#: Modules providing subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "toy_lm.cli_analyze",
    "toy_lm.cli_markov",
    "toy_lm.bench",
    "proofs_check.cli",
    "experiments.cli",
    "experiments.cli_demo",
    "experiments.cli_explore",
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="harm-horizon",
        description="Exact, checkable theory of shallow alignment on toy autoregressive policies.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from toy_lm.precision import require_x64

        require_x64()
        status = args.func(args)
    except HarmHorizonError as err:
        print(f"harm-horizon {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"harm-horizon {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
