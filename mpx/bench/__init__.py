"""The benchmark harness behind ``python -m mpx bench``.

- ``cli``: the command line; ``runner``: the run, the fork template and the
  watchdog; ``report``: ratios, targets, table, Markdown, chart;
- ``cases``: what is measured, and which peers take part; ``targets``: the
  speed each mpx contender is held to;
- ``contenders``: how each transport (mpx's and the peers') is opened and
  used; ``worker``: the template process and the measurements themselves.

Measurement code, outside the library's import graph: nothing in mpx
imports this package; it uses mpx only through its public API and the
backend registry. ``run`` returns the results as a dict (what ``--json``
writes); ``format_table``, ``format_markdown`` and ``plot`` render them.
"""

from .cli import add_bench_arguments, run_bench
from .report import format_markdown, format_table, plot
from .runner import run

__all__ = ["add_bench_arguments", "run_bench", "run", "format_table", "format_markdown",
           "plot"]
