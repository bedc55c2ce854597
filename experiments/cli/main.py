"""``harm-horizon``: the command-line entry point (the top layer: it names every command module).

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; this module only assembles them, turns float64 on, selects matplotlib's
Agg backend (through ``$MPLBACKEND``: the library never selects one), and turns every
:class:`~toy_lm.errors.HarmHorizonError` into one line on stderr and exit status 2 (no traceback);
a missing optional extra (``numba``, ``experiments``) gives one such line with its pip command.

SIGINT and SIGTERM are handled from the first line of :func:`main`, before the subcommands (and
with them numpy, JAX and numba) are imported: either ends the run with one line and exit status
130 or 143, after removing temporary output files (:mod:`toy_lm.signals`). Only this module's
imports (the standard library and :mod:`toy_lm.errors`) run before that.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from toy_lm import signals
from toy_lm.cli_output import say
from toy_lm.errors import HarmHorizonError

__all__ = [
    "COMMANDS",
    "COMMAND_MODULES",
    "EXTRAS",
    "build_parser",
    "main",
    "missing_extra",
    "one_line",
]

#: Modules providing subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "experiments.cli.analyze",
    "experiments.cli.markov",
    "experiments.bench.main",
    "experiments.cli.check",
    "experiments.cli.experiment",
    "experiments.cli.demo",
    "experiments.cli.explore",
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: Subcommand -> the module that registers it. A run imports only its command's module (a bad
#: option is refused before JAX, matplotlib and the other commands load); ``--help`` imports all.
COMMANDS = {
    "analyze": "experiments.cli.analyze",
    "analyze-markov": "experiments.cli.markov",
    "bench": "experiments.bench.main",
    "check": "experiments.cli.check",
    "train": "experiments.cli.experiment",
    "sweep": "experiments.cli.experiment",
    "figures": "experiments.cli.experiment",
    "experiment": "experiments.cli.experiment",
    "demo": "experiments.cli.demo",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of ``command`` when it is one of :data:`COMMANDS`."""
    parser = _Parser(
        prog="harm-horizon",
        description="Exact, checkable theory of shallow alignment on toy autoregressive policies.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def _enable_x64() -> None:
    """float64 on: through ``$JAX_ENABLE_X64`` when JAX is not loaded yet (so a refused input
    never waits for JAX to import), else :func:`toy_lm.precision.require_x64`."""
    env = os.environ.get("JAX_ENABLE_X64")
    if "jax" in sys.modules or (
        env is not None and env.strip().lower() in ("0", "false", "no", "off")
    ):
        from toy_lm.precision import require_x64

        require_x64()  # refuses JAX_ENABLE_X64=0 with its one-line message
    else:
        os.environ["JAX_ENABLE_X64"] = "1"


def _select_agg() -> None:
    """matplotlib's non-interactive Agg backend for the whole run (figures are files here), set
    through ``$MPLBACKEND`` so nothing is imported; the library itself never selects one."""
    os.environ.setdefault("MPLBACKEND", "Agg")


#: Modules of the optional extras -> the extra that installs them.
EXTRAS = {
    "matplotlib": "experiments",
    "pyarrow": "experiments",
    "markdown": "experiments",
    "numba": "numba",
}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The one-line fix when ``err`` is a module of an optional extra that is not installed."""
    top = (err.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return (
        f"this command needs {top}, which is not installed; install it with "
        f"pip install 'harm-horizon[{EXTRAS[top]}]'"
    )


def one_line(text: object) -> str:
    """A message on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0, 1 for failed checks, 2 for a named input or
    configuration error, 130/143 after SIGINT/SIGTERM)."""
    as_program = argv is None  # the console script: the interpreter exits after this returns
    previous = None
    command = "harm-horizon"
    status = 0
    try:
        try:
            previous = signals.install()  # inside the try: a Ctrl-C at once is one line too
            argv = sys.argv[1:] if argv is None else list(argv)
            args = build_parser(argv[0] if argv else None).parse_args(argv)
            command = f"harm-horizon {args.command}"
            _enable_x64()
            _select_agg()
            status = int(args.func(args) or 0)
        except HarmHorizonError as err:
            say(f"{command}: error: {one_line(err)}")
            status = 2
        except ModuleNotFoundError as err:
            fix = missing_extra(err)
            if fix is None:
                raise
            say(f"{command}: error: {fix}")
            status = 2
        except KeyboardInterrupt as err:
            status = signals.exit_status(getattr(err, "signum", 2))
        except BrokenPipeError:  # the reader of stdout went away (``| head``): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            status = 141
        finally:
            signals.remove_tracked()
        signum = signals.received()
        if signum is not None or status in (130, 143):
            signum = signum or status - 128
            say(
                f"{command}: interrupted by {signals.signal_name(signum)}; nothing partial "
                "was written (finished outputs are kept)"
            )
            return signals.exit_status(signum)
        return status
    finally:
        signals.restore(previous)
        if as_program and previous is not None:
            # The run is over and its status decided; a Ctrl-C during the interpreter's shutdown
            # (JAX's exit hooks take about a second) has nothing left to stop and would otherwise
            # end the process with a bare SIGINT status instead of the run's own.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
