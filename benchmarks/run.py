"""Run mpx's benchmark: the same as ``python -m mpx bench`` (all its options).

    python benchmarks/run.py --quick
    python benchmarks/run.py --cases 'queue-*' --json results.json --plot results.png

The harness itself lives in the package (``mpx/bench/``) so that
``python -m mpx bench`` works from any directory; this script only calls it.
"""

import argparse
import sys

from mpx import bench as _bench


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks/run.py",
                                     description="mpx against its peers, side by side")
    _bench.add_bench_arguments(parser)
    return _bench.run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
