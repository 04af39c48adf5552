"""``python -m mpx backends``: the registry's table, or its rows as JSON."""

import json

from . import backends

__all__ = ["add_backends_arguments", "run_backends"]


def add_backends_arguments(parser):
    parser.add_argument("--json", action="store_true",
                        help="print the rows as JSON instead of a table")


def run_backends(args):
    table = backends()
    print(json.dumps(table, indent=2) if args.json else table)
    return 0
