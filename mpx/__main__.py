"""The mpx command line: ``python -m mpx {bench,ls,rm} ...``."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpx",
                                     description="mpx: fast multiprocessing")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, module, summary in (
            ("bench", "mpx._bench", "compare mpx with multiprocessing, faster-fifo, pyzmq, ..."),
            ("ls", "mpx._objects", "list the named mpx objects on this machine"),
            ("rm", "mpx._objects", "remove named mpx objects")):
        import importlib
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=summary, description=summary)
        getattr(mod, f"add_{name}_arguments")(p)
        commands[name] = getattr(mod, f"run_{name}")
    args = parser.parse_args(argv)
    return commands[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
