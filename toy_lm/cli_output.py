"""One look for every command's results: rich tables on stdout, or the same data as JSON.

Every command that prints results (``analyze``, ``analyze-markov``, ``check``, ``bench``,
``train``, ``sweep``, ``figures``, ``experiment``) prints them through this module:

* :func:`make_table` - a :class:`rich.table.Table` in the one style (title above, a caption
  below for paths and timings, numbers right-aligned);
* :func:`print_table` - rows of dicts as such a table, each column formatted by a :class:`Column`;
* :func:`print_json` - the same data as strict JSON on stdout (``--json``), and nothing else on
  stdout, so that ``harm-horizon train quick --json | jq`` works; progress goes to stderr.

rich is a dependency already (tables and progress bars); argparse does the parsing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["Column", "console", "format_value", "make_table", "print_json", "print_table", "say"]

#: Console width when stdout is not a terminal (files, pipes, CI logs).
PIPE_WIDTH = 140


class Column(NamedTuple):
    """One column of a result table.

    Attributes:
      key: the row's key (rows are dicts).
      header: the column's heading (rich markup is not interpreted).
      format: a :meth:`str.format` pattern for a float (or each float of a list).
      justify: ``"right"`` (numbers) or ``"left"`` (names, statements).
    """

    key: str
    header: str
    format: str = "{:.4g}"
    justify: str = "right"


def console(*, stderr: bool = False):
    """A rich console on stdout (or stderr); :data:`PIPE_WIDTH` columns when not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream) if stream.isatty() else Console(file=stream, width=PIPE_WIDTH)


def format_value(value: Any, pattern: str = "{:.4g}") -> str:
    """A table cell: ``-`` for None, floats by ``pattern``, lists as ``[a b c]``.

    >>> format_value([0.5, 0.25, 1e-9], "{:.3f}"), format_value(None), format_value(3)
    ('[0.500 0.250 0.000]', '-', '3')
    """
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return pattern.format(value)
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(format_value(v, pattern) for v in value) + "]"
    try:  # numpy scalars and arrays
        import numpy as np

        array = np.asarray(value)
        if array.ndim == 0:
            return format_value(array.item(), pattern)
        return format_value(array.tolist(), pattern)
    except (TypeError, ValueError):
        return str(value)


def make_table(title: str, columns: Sequence[Column] = (), *, caption: str | None = None):
    """An empty :class:`rich.table.Table` in the one style, with ``columns`` added."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(title),
        caption=None if caption is None else Text(caption),
        title_justify="left",
        caption_justify="left",
    )
    for col in columns:
        table.add_column(
            Text(col.header),
            justify=col.justify,  # type: ignore[arg-type]
            no_wrap=col.justify == "right",
        )
    return table


def print_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Mapping[str, Any]],
    *,
    caption: str | None = None,
    out=None,
) -> None:
    """Print ``rows`` (dicts) as a table with ``columns``; a missing key prints ``-``.

    Args:
      title: above the table.
      columns: what to show, in order.
      rows: one dict per row.
      caption: below the table (paths written, timings).
      out: a rich console (default :func:`console`).
    """
    from rich.text import Text

    table = make_table(title, columns, caption=caption)
    for row in rows:
        table.add_row(*(Text(format_value(row.get(col.key), col.format)) for col in columns))
    (out or console()).print(table)


def print_json(payload: Any) -> None:
    """``payload`` as strict, indented JSON on stdout (NaN and infinities raise ``ValueError``:
    pass :func:`toy_lm.outputs.null_nonfinite` of a record where they mean "not measured")."""
    from toy_lm.outputs import json_text

    text = json_text(payload, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say(line: str) -> None:
    """``line`` and its newline on stderr in one write, flushed: a Ctrl-C between the text and the
    newline (``print`` writes them apart) would glue the interruption message to the line."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
