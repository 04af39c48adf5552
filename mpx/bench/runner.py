"""``python -m mpx bench``: mpx against its peers, side by side, in one run.

For every case (see ``mpx._bench_cases``) the harness measures each mpx
backend the registry offers and each peer, alternating between them, several
times, and reports the median of each and the ratio. Every measurement runs
in a fresh process forked from a template that imported everything once (see
``mpx._bench_worker``), under a watchdog that kills the measurement and every
process it started when it overruns, so a broken case reports an error and
the run goes on.

Nothing is hard-coded: every figure printed comes from this run, and a
measurement whose messages did not arrive intact is an error, not a figure.

Entry points for programs: :func:`run` returns the results as a dict (the
same as ``--json`` writes), :func:`format_table`, :func:`format_markdown`
and :func:`plot` render them.
"""

import datetime
import json
import os
import pickle
import platform
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from . import cases as cases_mod
from . import contenders as adapters
from .targets import TARGETS

__all__ = ["add_bench_arguments", "run_bench", "run", "format_table",
           "format_markdown", "plot", "machine_description"]

# reps: timed repetitions per contender; duration: seconds each timed
# repetition aims for (the calibration run picks the count).
MODES = {
    "full": {"reps": 5, "duration": 0.25},
    "quick": {"reps": 3, "duration": 0.06},
    "smoke": {"reps": 1, "duration": 0.0},
}
WATCHDOG_GRACE = 15.0        # seconds past a measurement's own deadline


# --- command line -------------------------------------------------------------

def add_bench_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="a reduced set of cases, shorter runs: under a minute")
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


# --- the run -------------------------------------------------------------------

def run(cases=None, quick=False, smoke=False, reps=None, duration=None, timeout=None,
        progress=False, command=None, contenders=None, _fault=None):
    """Run the benchmark; return the results (what ``--json`` writes).

    `cases` and `contenders` are comma-separated patterns (see --list and
    the table); `_fault` is for the harness's own tests only."""
    mode = "smoke" if smoke else "quick" if quick else "full"
    reps = reps or MODES[mode]["reps"]
    duration = MODES[mode]["duration"] if duration is None else duration
    selected = cases_mod.select(cases, quick=quick, smoke=smoke)
    peers, peer_versions = cases_mod.peer_status()
    plan = [(case, cases_mod.contenders(case, peers)) for case in selected]
    if contenders:
        globs = [g.strip() for g in contenders.split(",") if g.strip()]
        plan = [(case, [c for c in cs if any(_match(c["name"], g) for g in globs)])
                for case, cs in plan]
        if not any(cs for _, cs in plan):
            raise ValueError(f"no contender matches {contenders!r} in the chosen cases")
    runnable = sum(1 for _, cs in plan for c in cs if not c["unavailable"])
    runnable_pilots = sum(1 for case, cs in plan for c in cs
                          if not c["unavailable"] and case["calibrate"] and not smoke)
    runnable = runnable * reps + runnable_pilots
    started = time.time()
    results = {
        "format": 1,
        "command": command or "mpx.bench.run()",
        "mode": mode, "reps": reps, "duration": duration,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "mpx_version": _mpx_version(),
        "backends": _registry_rows(),
        "peers": peers, "peer_versions": peer_versions,
        "cases": [],
    }
    bar = _Progress(runnable, enabled=progress)
    tmpdir = tempfile.mkdtemp(prefix="mpx-bench-")
    try:
        with _Template(_preload(), tmpdir) as template:
            for case, entrants in plan:
                results["cases"].append(
                    _run_case(template, case, entrants, mode, reps, duration,
                              timeout, tmpdir, bar, _fault))
            results["named_objects"] = template.named
    finally:
        bar.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    results["seconds"] = round(time.time() - started, 1)
    _derive(results)
    return results


def _run_case(template, case, contenders, mode, reps, duration, timeout, tmpdir, bar,
              fault=None):
    if case["max_reps"]:
        bar.skip(max(0, reps - case["max_reps"]) * sum(1 for c in contenders
                                                      if not c["unavailable"]))
        reps = min(reps, case["max_reps"])
    rows = []
    for c in contenders:
        row = {"name": c["name"], "side": c["side"], "backend": c["backend"],
               "figures": [], "counts": [], "seconds": []}
        if c["unavailable"]:
            row["status"] = "unavailable" if c["side"] == "mpx" else "missing"
            row["reason"] = _dedupe(c["unavailable"])
        else:
            row["status"] = "ok"
        rows.append(row)
    live = [(c, r) for c, r in zip(contenders, rows) if r["status"] == "ok"]
    limit = timeout or case["timeout"]

    def measure(contender, row, count, what):
        bar.step(f"{case['name']}  {what}  {contender['name']}")
        taken[row["name"]] = taken.get(row["name"], 0) + 1
        out = template.measure({
            "case": case, "contender": contender, "count": count, "duration": duration,
            "env": {"tmpdir": tmpdir, "timeout": limit}, "fault": fault,
        }, limit + WATCHDOG_GRACE)
        if "error" in out:
            # The contender's remaining repetitions will not run.
            bar.skip(remaining_steps(row))
            row["status"] = "error"
            row["error"] = out["error"]
            if out.get("detail"):
                row["detail"] = out["detail"]
            bar.note(f"{case['name']}: {contender['name']}: {out['error']}")
        return out

    steps_per = reps + (1 if mode != "smoke" and case["calibrate"] else 0)
    taken = {}

    def remaining_steps(row):
        return steps_per - taken.get(row["name"], 0)

    # Calibration: a short run per contender sizes the timed ones so that
    # each lasts about `duration` whatever the contender's speed.
    counts = {}
    for contender, row in live:
        if mode == "smoke" or not case["calibrate"]:
            counts[contender["name"]] = case["smoke"] if mode == "smoke" else case["min"]
            continue
        out = measure(contender, row, case["pilot"], "calibrating")
        if "ok" in out:
            rate = out["ok"]["rate"]
            aim = max(duration, case["min_duration"])
            counts[contender["name"]] = int(min(case["max"], max(case["min"], rate * aim)))
    for rep in range(reps):
        # Alternate: each repetition visits the contenders in a rotated order.
        order = live[rep % len(live):] + live[:rep % len(live)] if live else []
        for contender, row in order:
            if row["status"] != "ok":
                continue
            out = measure(contender, row, counts[contender["name"]],
                          f"rep {rep + 1}/{reps}")
            if "ok" in out:
                row["figures"].append(out["ok"]["figure"])
                row["counts"].append(out["ok"]["count"])
                row["seconds"].append(round(out["ok"]["elapsed"], 6))
    for row in rows:
        if row["status"] == "ok" and row["figures"]:
            row["median"] = statistics.median(row["figures"])
        elif row["status"] == "ok":
            row["status"] = "error"
            row["error"] = "no measurement completed"
    out = {k: case[k] for k in ("name", "title", "kind", "unit", "payload", "size",
                                 "producers", "consumers", "batch")}
    out["higher_is_better"] = cases_mod.UNITS[case["unit"]]
    out["reps"] = reps
    out["contenders"] = rows
    bar.case_done(case["name"], rows)
    return out


def _preload():
    """Modules the template imports once, so that measurements fork them
    ready: the worker, the peers, and the backends the registry can load."""
    names = ["mpx.bench.worker", "numpy", "zmq", "faster_fifo", "posix_ipc", "sysv_ipc",
             "multiprocessing.pool", "concurrent.futures.process", "loky", "mpire",
             "multiprocessing.managers", "multiprocessing.queues"]
    try:
        from .. import backends as registry
        for row in registry.backends():
            if row["available"]:
                names.extend(registry.BACKENDS[row["name"]][1])
    except Exception:
        pass
    names.append("mpx.sharedarray")
    return names


class _Template:
    """The fork template: one fresh interpreter per run (see _bench_worker)."""

    def __init__(self, preload, tmpdir):
        self.preload = preload
        self.tmpdir = tmpdir
        self.seq = 0
        self.proc = None
        self.named = []          # named objects the measurements recorded

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self._stop()

    def _start(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
        self.log = os.path.join(self.tmpdir, "template.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mpx.bench.worker", *self.preload],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                cwd=self.tmpdir, env=env, close_fds=True)
        self.buf = b""
        line = self._readline(time.monotonic() + 120)
        if line != "ready":
            self._stop()
            raise RuntimeError("the benchmark's template process did not start: "
                               + self._tail(self.log))

    def _stop(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc = None

    def _readline(self, deadline):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError("the benchmark's template process exited: "
                                   + self._tail(self.log))
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    @staticmethod
    def _tail(path, lines=6):
        try:
            with open(path, errors="replace") as f:
                text = f.read().strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def measure(self, job, timeout):
        """Run one job in a fresh process; {'ok': figures} or {'error': why}."""
        self.seq += 1
        stem = os.path.join(self.tmpdir, f"m{self.seq}")
        job = dict(job, log=stem + ".log", result=stem + ".result")
        job["env"] = dict(job["env"], manifest=stem + ".manifest")
        if self.proc is None or self.proc.poll() is not None:
            self._stop()
            self._start()
        data = pickle.dumps(job)
        pid = None
        try:
            self.proc.stdin.write(struct.pack("!I", len(data)) + data)
            self.proc.stdin.flush()
            line = self._readline(time.monotonic() + 30)
            if not line or not line.startswith("pid "):
                raise EOFError(f"the template did not start a measurement ({line!r})")
            pid = int(line.split()[1])
            line = self._readline(time.monotonic() + timeout)
            timed_out = line is None
            if timed_out:
                self._kill(pid)
                line = self._readline(time.monotonic() + 30)
            status = int(line.split()[1]) if line and line.startswith("status ") else None
            if status is None:
                self._stop()        # out of step with the template: start afresh
            self._reap_group(pid)
        except (EOFError, OSError) as e:
            if pid is not None:
                self._kill(pid)
            self._stop()
            return {"error": f"benchmark infrastructure: {e}"}
        except BaseException:          # Ctrl-C, SIGTERM: stop the measurement too
            if pid is not None:
                self._kill(pid)
            raise
        finally:
            self.named.extend(adapters.cleanup(job["env"]["manifest"]))
        try:
            if timed_out:
                return {"error": f"timed out after {timeout:g} s and was killed; last "
                                 f"output: {self._tail(job['log'], 3)}"}
            try:
                with open(job["result"], "rb") as f:
                    return pickle.load(f)
            except FileNotFoundError:
                return {"error": f"the measurement process died ({_status_text(status)}); "
                                 f"last output: {self._tail(job['log'], 3)}"}
        finally:
            for suffix in (".log", ".result", ".manifest"):
                try:
                    os.unlink(stem + suffix)
                except OSError:
                    pass

    @staticmethod
    def _reap_group(pid, wait=5.0):
        """Give what the measurement started (a manager's server, a resource
        tracker) a moment to finish on its own, then kill what is left of its
        process group: no measurement leaves a process behind."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except OSError:
                return
            time.sleep(0.01)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    @staticmethod
    def _kill(pid):
        """Kill the measurement and everything it started (its process group)."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _dedupe(reason):
    """The registry joins the reasons of a backend's modules; say each once."""
    if not reason:
        return reason
    parts = []
    for part in str(reason).split("; "):
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


def _status_text(status):
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exit code {os.WEXITSTATUS(status)}"


# --- derived figures: ratios, ceiling, targets ---------------------------------------

def _errors(results):
    return [(case["name"], c["name"], c.get("error"))
            for case in results["cases"] for c in case["contenders"]
            if c["status"] == "error"]


def _speedup(case, mpx_value, peer_value):
    if not mpx_value or not peer_value:
        return None
    return mpx_value / peer_value if case["higher_is_better"] else peer_value / mpx_value


def _ceiling(results, name="memcpy"):
    for case in results["cases"]:
        if case["name"] == name:
            for c in case["contenders"]:
                if c["status"] == "ok":
                    return c["median"]
    return None


def _derive(results):
    """Best peer and speedup per mpx contender, share of the memcpy
    ceiling, and the targets, from the medians of this run."""
    ceiling = _ceiling(results)
    results["memcpy_GBps"] = ceiling
    results["memcpy_1MiB_GBps"] = _ceiling(results, "memcpy-1MiB")
    for case in results["cases"]:
        peers = [c for c in case["contenders"] if c["side"] == "peer" and c["status"] == "ok"]
        best = None
        if peers:
            pick = max if case["higher_is_better"] else min
            best = pick(peers, key=lambda c: c["median"])
        case["best_peer"] = best["name"] if best else None
        # The stdlib object the case would use without mpx (mp.Queue, mp.Pipe, ...).
        stdlib = next((p for p in peers if p["name"].startswith("mp.")), None)
        case["stdlib_peer"] = stdlib["name"] if stdlib else None
        for c in case["contenders"]:
            if c["side"] != "mpx" or c["status"] != "ok":
                continue
            c["speedup"] = {p["name"]: _speedup(case, c["median"], p["median"]) for p in peers}
            c["speedup_best"] = c["speedup"].get(case["best_peer"])
            c["speedup_stdlib"] = c["speedup"].get(case["stdlib_peer"])
            if case["unit"] == "GB/s" and ceiling:
                c["of_memcpy"] = c["median"] / ceiling
    results["targets"] = _evaluate_targets(results)
    if results["mode"] == "smoke":
        # Tiny counts say nothing about speed: no target is judged on them.
        for t in results["targets"]:
            if t["state"] in ("met", "MISSED"):
                t["state"] = "not measured"
                t["note"] = "smoke run: figures from tiny counts are not judged"
                t.pop("value", None)


def _match(name, pattern):
    """Glob match where only '*' is special (names contain brackets)."""
    import fnmatch
    return fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def _evaluate_targets(results):
    out = []
    by_name = {case["name"]: case for case in results["cases"]}
    ceiling = results.get("memcpy_GBps")
    for target in TARGETS:
        cases = [c for n, c in by_name.items() if _match(n, target["case"])]
        for case in cases:
            mpx_rows = [c for c in case["contenders"] if c["side"] == "mpx"
                        and _match(c["name"], target["mpx"])]
            if not mpx_rows:
                out.append(dict(target, case_run=case["name"], mpx_run=target["mpx"],
                                state="not measured",
                                note=f"{target['mpx']} is not a contender here"))
            for row in mpx_rows:
                out.append(_evaluate(target, case, row, ceiling))
        if not cases:
            out.append(dict(target, case_run=target["case"], mpx_run=target["mpx"],
                            state="not measured", note="case not in this run"))
    return out


def _evaluate(target, case, row, ceiling):
    res = dict(target, case_run=case["name"], mpx_run=row["name"])
    if row["status"] != "ok":
        why = row.get("reason") or row.get("error") or row["status"]
        return dict(res, state="not measured", note=f"{row['name']}: {why}")
    if "peer" in target:
        peer = next((c for c in case["contenders"] if c["name"] == target["peer"]), None)
        if peer is None or peer["status"] != "ok":
            why = peer and (peer.get("reason") or peer.get("error"))
            return dict(res, state="not measured", note=f"peer {target['peer']}: {why}")
        value = _speedup(case, row["median"], peer["median"])
    elif "ceiling" in target:
        if not ceiling:
            return dict(res, state="not measured", note="memcpy ceiling not measured")
        value = row["median"] / ceiling
    else:
        value = row["median"]
    if "at_least" in target:
        met = value >= target["at_least"]
    else:
        met = value <= target["at_most"]
    return dict(res, state="met" if met else "MISSED", value=value)


def _target_text(t, unit=None):
    if "peer" in t:
        return f">= {t['at_least']:.3g}x {t['peer']}"
    if "ceiling" in t:
        return f">= {t['at_least']:.0%} of {t['ceiling']}"
    return f"<= {t['at_most']:g} {unit or ''}".rstrip()


def _target_value(t, unit=None):
    if "value" not in t:
        return ""
    if "peer" in t:
        return f"{t['value']:.2f}x"
    if "ceiling" in t:
        return f"{t['value']:.1%}"
    return _fmt(t["value"], unit)


# --- rendering -------------------------------------------------------------------------

def _fmt(value, unit):
    if value is None:
        return "-"
    if unit in ("msg/s", "calls/s", "tasks/s"):
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= div:
                return f"{value / div:.3g}{suffix} {unit}"
        return f"{value:.3g} {unit}"
    if unit == "GB/s" and value < 1:
        return f"{value * 1e3:.3g} MB/s"
    if unit == "us":
        return f"{value:.3g} us"
    if unit == "ms":
        return f"{value:.3g} ms"
    return f"{value:.3g} {unit}"


def _rows(results, default_only=False):
    """Table rows: one per mpx contender that ran (or failed) per case; with
    `default_only`, only each family's default (its first backend, in the
    registry's order of preference, that is available)."""
    units = {c["name"]: c["unit"] for c in results["cases"]}
    marks = {}
    for t in results.get("targets", ()):
        if t["state"] in ("met", "MISSED"):
            marks.setdefault((t["case_run"], t["mpx_run"]), []).append(t["state"])
    rows = []
    for case in results["cases"]:
        if case["kind"] == "memcpy":
            continue
        unit = units[case["name"]]
        best = next((c for c in case["contenders"] if c["name"] == case.get("best_peer")), None)
        peer_cells = (best["name"], _fmt(best["median"], unit)) if best else \
            ("(no peer ran)", "-")
        mpx_rows = [c for c in case["contenders"]
                    if c["side"] == "mpx" and c["status"] in ("ok", "error")]
        if default_only:
            firsts = {}
            for c in mpx_rows:
                firsts.setdefault(c["name"].split("[")[0], c)
            mpx_rows = list(firsts.values())
        if not mpx_rows:
            rows.append([case["name"], "(no mpx contender ran)", "-", "-", *peer_cells,
                         "-", ""])
        for c in mpx_rows:
            label = c["name"].replace("mpx.", "", 1)
            if c["status"] == "error":
                figure = "ERROR (see below)"
                speed = stdlib = "-"
            else:
                figure = _fmt(c["median"], unit)
                if c.get("of_memcpy") is not None and case["size"] >= 1 << 20:
                    figure += f" ({c['of_memcpy']:.0%} memcpy)"
                speed = _times(c.get("speedup_best"))
                stdlib = _times(c.get("speedup_stdlib"))
            states = marks.get((case["name"], c["name"]), [])
            mark = ""
            if states:
                met = states.count("met")
                mark = f"met {met}/{len(states)}" if met == len(states) else \
                    f"MISSED {len(states) - met}/{len(states)}"
            rows.append([case["name"], label, figure, stdlib, *peer_cells, speed, mark])
    return rows


_LEGEND = [
    "vs stdlib: how many times faster mpx is than the multiprocessing object the case",
    "           would use without mpx (mp.Queue, mp.Pipe, mp.Manager), in the same run;",
    "vs best:   the same against the fastest peer of the case (throughput ratios; for",
    "           round trips and hand-offs, the peer's time over mpx's).",
]


def _times(ratio):
    if not ratio:
        return "-"
    for limit, digits in ((10, 2), (100, 1), (1000, 0)):
        if ratio < limit:
            return f"{ratio:.{digits}f}x"
    return f"{ratio:,.0f}x"


HEADER = ["case", "mpx", "mpx figure", "vs stdlib", "best peer", "peer figure", "vs best",
          "targets"]
_RIGHT = (3, 6)          # the ratio columns


def format_table(results, every=False, default_only=False):
    """The plain-text report."""
    out = []
    m = results["machine"]
    reps = results["reps"]
    out.append(f"mpx {results.get('mpx_version', '?')} benchmark ({results['mode']}: "
               f"{reps} timed repetition{'s' if reps > 1 else ''} per contender, median) "
               f"on {m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['os']}")
    if results["mode"] == "smoke":
        out.append("SMOKE RUN: tiny counts that check delivery only; the figures mean nothing.")
    out.append(_backends_text(results))
    out.append("")
    rows = _rows(results, default_only)
    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip()
    out.append(line)
    out.append("-" * len(line))
    last = None
    for r in rows:
        cells = list(r)
        if cells[0] == last:
            cells[0] = ""
        else:
            last = cells[0]
        out.append("  ".join(str(c).rjust(w) if i in _RIGHT else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    out.append("")
    out.extend(_LEGEND)
    out.extend(_ceiling_text(results))
    out.extend(_targets_text(results))
    errs = _errors(results)
    if errs:
        out.append("")
        out.append("Errors (no figure is reported for these):")
        for case, name, err in errs:
            out.append(f"  {case}: {name}: {err}")
    if every:
        out.append("")
        out.extend(_every_text(results))
    out.append("")
    out.append(f"{results.get('seconds', '?')} s; command: {results['command']}")
    return "\n".join(out)


def _ceiling_text(results):
    lines = []
    if results.get("memcpy_GBps"):
        lines.append(f"ceiling: memcpy on one core, 256 MiB (from RAM): "
                     f"{results['memcpy_GBps']:.3g} GB/s (the \"% memcpy\" above and the "
                     f"targets use this)")
    if results.get("memcpy_1MiB_GBps"):
        lines.append(f"         1 MiB (in cache): {results['memcpy_1MiB_GBps']:.3g} GB/s "
                     f"(1 MiB messages can stay in cache too)")
    return lines


def _backends_text(results):
    lines = ["mpx backends (from the registry):"]
    for row in results["backends"]:
        if row["available"]:
            lines.append(f"  {row['name']:6} {', '.join(row['families'])}")
        else:
            lines.append(f"  {row['name']:6} not available: {_dedupe(row['reason'])}")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(results["peer_versions"].items()))
    lines.append(f"peers: multiprocessing (stdlib){', ' + versions if versions else ''}")
    for name, why in results["peers"].items():
        if why:
            lines.append(f"  {name}: {why}")
    return "\n".join(lines)


def _targets_text(results):
    targets = results.get("targets", ())
    if not targets:
        return []
    units = {c["name"]: c["unit"] for c in results["cases"]}
    lines = ["", "Targets (from the issues; ratios against peers measured in this run):"]
    absent = sorted({t["case_run"] for t in targets if t.get("note") == "case not in this run"})
    for t in targets:
        if t.get("note") == "case not in this run":
            continue
        unit = units.get(t["case_run"])
        issue = f"#{t['issue']} " if "issue" in t else ""
        what = f"{issue}{t['case_run']}: {t['mpx_run'].replace('mpx.', '', 1)} " \
               f"{_target_text(t, unit)}"
        if t["state"] in ("met", "MISSED"):
            lines.append(f"  {t['state']:7} {what}: {_target_value(t, unit)}")
        else:
            lines.append(f"  {'-':7} {what}: not measured ({t['note']})")
    if absent:
        skipped = sum(1 for t in targets if t.get("note") == "case not in this run")
        lines.append(f"  ({skipped} more for cases not in this run: {', '.join(absent)})")
    return lines


def _every_text(results):
    lines = ["Every contender (median of the timed repetitions):"]
    for case in results["cases"]:
        lines.append(f"  {case['name']} - {case['title']}")
        live = [c for c in case["contenders"] if c["status"] == "ok"]
        pick = (lambda c: -c["median"]) if case["higher_is_better"] else (lambda c: c["median"])
        for c in sorted(live, key=pick):
            spread = ""
            if len(c["figures"]) > 1:
                spread = f"  [{_fmt(min(c['figures']), case['unit'])} .. " \
                         f"{_fmt(max(c['figures']), case['unit'])}]"
            lines.append(f"      {c['name']:24} {_fmt(c['median'], case['unit']):>14}{spread}")
        for c in case["contenders"]:
            if c["status"] != "ok":
                why = c.get("reason") or c.get("error")
                lines.append(f"      {c['name']:24} {c['status']}: {why}")
    return lines


def format_markdown(results, default_only=False):
    """The README's table: Markdown, with the machine it was measured on."""
    m = results["machine"]
    out = [f"Measured on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, "
           f"{m['os']}, Python {m['python']}, numpy {m.get('numpy', '?')}, "
           f"on {results['started'][:10]} with `{results['command']}` "
           f"({results['reps']} timed repetitions per contender, median).", ""]
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "|".join(["---", "---", "---:", "---:", "---", "---:", "---:", "---"])
               + "|")
    for r in _rows(results, default_only):
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    out.append("")
    out.append(" ".join(" ".join(_LEGEND).split()))
    ceiling = _ceiling_text(results)
    if ceiling:
        out.append(" ".join(" ".join(ceiling).split()) + ".")
    missing = [f"{r['name']} ({_dedupe(r['reason'])})"
               for r in results["backends"] if not r["available"]]
    if missing:
        out.append("Not measured (backend not available in this build): "
                   + "; ".join(missing) + ".")
    absent = [f"{n} ({why})" for n, why in results["peers"].items() if why]
    if absent:
        out.append("Peers missing: " + "; ".join(absent) + ".")
    return "\n".join(out)


def plot(results, path):
    """Throughput against message size, for mpx and each peer, one panel
    per payload kind (bytes, numpy arrays, Pipe bytes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("queue", "bytes", "Queue, bytes"), ("queue", "numpy", "Queue, numpy arrays"),
              ("pipe", "bytes", "Pipe, send_bytes")]
    series = {}
    for case in results["cases"]:
        if case["kind"] != "stream" or case["unit"] != "GB/s" \
                or case["producers"] != 1 or case["consumers"] != 1:
            continue
        family = case["name"].split("-")[0]
        for c in case["contenders"]:
            if c["status"] == "ok":
                series.setdefault((family, case["payload"]), {}).setdefault(
                    c["name"], []).append((case["size"], c["median"]))
    used = [p for p in panels if series.get(p[:2])]
    if not used:
        raise ValueError("no throughput-by-size cases in these results to plot")
    # A panel with one size says nothing about size: leave it out when
    # another panel has a curve.
    curves = [p for p in used if len({x for pts in series[p[:2]].values() for x, _ in pts}) > 1]
    used = curves or used
    names = sorted({n for p in used for n in series[p[:2]]})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(used), figsize=(6.5 * len(used), 4.8), squeeze=False)
    ceiling = results.get("memcpy_GBps")
    for ax, (family, payload, title) in zip(axes[0], used):
        sizes = set()
        for name, points in sorted(series[(family, payload)].items()):
            points.sort()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            sizes.update(xs)
            ours = name.startswith("mpx.")
            ax.plot(xs, ys, "-o" if ours else "--s", label=name, color=colors[name],
                    linewidth=2.2 if ours else 1)
        if ceiling:
            ax.axhline(ceiling, color="black", linestyle=":", label="memcpy (1 core)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(sizes))
        ax.set_xticklabels([cases_mod._size_name(x) for x in sorted(sizes)])
        ax.minorticks_off()
        ax.set_xlabel("message size")
        ax.set_ylabel("GB/s (median)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    m = results["machine"]
    fig.suptitle(f"mpx vs peers: {m['cores']} cores, {m['cpu']}, Python {m['python']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the machine ---------------------------------------------------------------------

def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    try:
        import numpy
        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": memory,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "numpy": numpy_version}


def _mpx_version():
    try:
        from importlib.metadata import version
        return version("mpx")
    except Exception:
        return "?"


def _registry_rows():
    try:
        from .. import backends as registry
        return [dict(r, families=list(r["families"])) for r in registry.backends()]
    except Exception as e:
        return [{"name": "?", "available": False, "reason": f"registry failed: {e}",
                 "families": [], "description": ""}]


class _Progress:
    """One updating line on a terminal; a line per case otherwise."""

    def __init__(self, total, enabled):
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.width = 0

    def _elapsed(self):
        return f"{time.monotonic() - self.t0:5.1f}s"

    def step(self, what):
        self.done += 1
        if self.tty:
            text = f"[{self.done:3}/{self.total}] {self._elapsed()}  {what}"
            text = text[:shutil.get_terminal_size((100, 20)).columns - 1]
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = len(text)

    def skip(self, n):
        self.done += n

    def note(self, text):
        if self.enabled:
            if self.tty:
                sys.stderr.write("\r" + " " * self.width + "\r")
                self.width = 0
            print(f"  ! {text}", file=sys.stderr)

    def case_done(self, name, rows):
        if self.enabled and not self.tty:
            ok = sum(1 for r in rows if r["status"] == "ok")
            print(f"[{self.done:3}/{self.total}] {self._elapsed()}  {name}: "
                  f"{ok}/{len(rows)} contenders measured", file=sys.stderr)

    def close(self):
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
