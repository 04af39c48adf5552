"""The run: mpx against its peers, side by side, in one run.

For every case (see ``mpx.bench.cases``) the harness measures each mpx
backend the registry offers and each peer, alternating between them, several
times, and reports the median of each and the ratio. Every measurement runs
in a fresh process forked from a template that imported everything once (see
``mpx.bench.worker``), under a watchdog that kills the measurement and every
process it started when it overruns, so a broken case reports an error and
the run goes on.

Nothing is hard-coded: every figure printed comes from this run, and a
measurement whose messages did not arrive intact is an error, not a figure.

:func:`run` returns the results as a dict (the same as ``--json`` writes);
``mpx.bench.report`` derives the ratios and targets and renders them.
"""

import datetime
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
from .report import _dedupe, _derive, _match

__all__ = ["run", "machine_description"]

# reps: timed repetitions per contender; duration: seconds each timed
# repetition aims for (the calibration run picks the count). Quick runs'
# repetitions used to aim at 0.06 s: a Manager repetition was ~50 ms of
# calls, and on a machine shared with other work one scheduling hiccup
# moved a median across a target's line (a fresh clone's first quick run
# missed three targets that the next one met). 0.2 s rides those out.
MODES = {
    "full": {"reps": 5, "duration": 0.25},
    "quick": {"reps": 3, "duration": 0.2},
    "smoke": {"reps": 1, "duration": 0.0},
}
WATCHDOG_GRACE = 15.0        # seconds past a measurement's own deadline


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
    # mpx's own objects above the backends, as the stdlib's pool is above.
    names += ["mpx.sharedarray", "mpx.pool", "mpx.futures"]
    return names


class _Template:
    """The fork template: one fresh interpreter per run (see mpx.bench.worker)."""

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
