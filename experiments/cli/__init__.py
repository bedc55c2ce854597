"""The command-line layer: ``harm-horizon`` and its subcommands, the only code (with
:mod:`experiments.bench`) that imports every layer."""
