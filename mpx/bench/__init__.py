"""The benchmark harness behind ``python -m mpx bench``.

Measurement code, outside the library's import graph: nothing in mpx
imports this package; it uses mpx only through its public API and the
backend registry. ``run`` returns the results as a dict (what ``--json``
writes); ``format_table``, ``format_markdown`` and ``plot`` render them.
"""

from .runner import (add_bench_arguments, format_markdown, format_table, plot, run,
                     run_bench)

__all__ = ["add_bench_arguments", "run_bench", "run", "format_table", "format_markdown",
           "plot"]
