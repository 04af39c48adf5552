"""``python -m mpx bench``: the command line over :func:`mpx.bench.runner.run`
and the renderers in :mod:`mpx.bench.report`."""

import json
import signal
import sys

from . import cases as cases_mod
from .report import _derive, _errors, format_markdown, format_table, plot
from .runner import run

__all__ = ["add_bench_arguments", "run_bench"]


# --- command line -------------------------------------------------------------

def add_bench_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="a reduced set of cases, shorter runs: about a minute")
    parser.add_argument("--smoke", action="store_true",
                        help="every case with tiny counts, once: checks that each "
                             "runs and delivers intact (figures mean nothing)")
    parser.add_argument("--cases", metavar="PATTERN",
                        help="comma-separated globs or substrings of case names "
                             "(see --list)")
    parser.add_argument("--contenders", metavar="PATTERN",
                        help="only these contenders: comma-separated globs of their "
                             "names, e.g. 'mpx.Queue[shm],mp.Queue'")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--reps", type=int, metavar="N",
                        help="timed repetitions per contender (default: 3 quick, 5 full)")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="length each timed repetition aims for")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="per-measurement limit (default: the case's own)")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="chart of throughput against message size (matplotlib)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as Markdown with the machine's description")
    parser.add_argument("--default-only", action="store_true",
                        help="in the table, only each family's default mpx backend")
    parser.add_argument("--all", action="store_true",
                        help="also print every contender's figure in every case")
    parser.add_argument("--from-json", metavar="FILE",
                        help="render a previous --json file instead of running")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display on stderr")


def run_bench(args):
    if args.list:
        for case in cases_mod.CASES:
            flag = "quick" if case["quick"] else "     "
            print(f"{case['name']:24} {flag}  {case['title']}")
        return 0
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        _derive(results)            # ratios and targets as this version reads them
    else:
        if args.reps is not None and args.reps < 1:
            raise SystemExit("--reps must be at least 1")
        if args.quick and args.smoke:
            raise SystemExit("python -m mpx bench: choose --quick or --smoke, not both")
        # SIGTERM unwinds like Ctrl-C, so that the measurement in flight, the
        # template and the temporary directory go with us.
        signal.signal(signal.SIGTERM, _terminate)
        try:
            results = run(cases=args.cases, quick=args.quick, smoke=args.smoke,
                          reps=args.reps, duration=args.duration, timeout=args.timeout,
                          progress=not args.no_progress, contenders=args.contenders,
                          command=_command_line(args))
        except ValueError as e:
            raise SystemExit(f"python -m mpx bench: {e}") from None
        except KeyboardInterrupt:
            print("\ninterrupted: every measurement process was stopped", file=sys.stderr)
            return 130
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    if args.markdown:
        print(format_markdown(results, default_only=args.default_only))
    else:
        print(format_table(results, every=args.all, default_only=args.default_only))
    if args.json:
        print(f"\nfigures written to {args.json}", file=sys.stderr)
    if args.plot:
        try:
            plot(results, args.plot)
        except (ValueError, ImportError) as e:
            print(f"no chart: {e}", file=sys.stderr)
            return 1
        print(f"chart written to {args.plot}", file=sys.stderr)
    return 1 if _errors(results) else 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def _command_line(args):
    parts = ["python -m mpx bench"]
    for flag in ("quick", "smoke"):
        if getattr(args, flag):
            parts.append("--" + flag)
    for opt in ("cases", "contenders", "reps", "duration", "timeout"):
        value = getattr(args, opt)
        if value is not None:
            parts.append(f"--{opt} '{value}'" if opt in ("cases", "contenders")
                         else f"--{opt} {value}")
    return " ".join(parts)
