"""The mpx command line: ``python -m mpx {bench,backends,ls,rm} ...``."""

import argparse
import importlib
import sys

# command -> (module that implements it, one line of help). Each module has
# add_<command>_arguments(parser) and run_<command>(args); only the chosen
# command's module is imported, so one command's trouble never breaks another.
COMMANDS = {
    "bench": ("mpx.bench", "compare mpx with multiprocessing, faster-fifo, pyzmq, ..."),
    "backends": ("mpx.backends._cli", "show the backends, what each offers here, and the defaults"),
    "ls": ("mpx._objects", "list the named mpx objects on this machine"),
    "rm": ("mpx._objects", "remove named mpx objects"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m mpx",
                                     description="mpx: fast multiprocessing")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name == chosen:
            mod = importlib.import_module(module)
            getattr(mod, f"add_{name}_arguments")(p)
            p.set_defaults(run=getattr(mod, f"run_{name}"))
    args = parser.parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
