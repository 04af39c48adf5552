"""One benchmark measurement, run in a fresh process.

The harness (``mpx.bench.runner``) starts one *template* process per run with
``python -m mpx.bench.worker``: a fresh interpreter that imports numpy, mpx
and the peers once and then does nothing but fork. Every measurement is a new
child forked from that template, so each one starts from the same untouched
heap: the allocator's state after one contender has moved 64 MiB messages
changes the next one's large-message figures several-fold, and forking a
template gives a fresh process for the price of a fork instead of an import.

A measurement child puts itself in its own process group (the harness kills
it and everything it started with one ``killpg`` on a timeout), sends its
output to a log file, runs one measurement and writes the result to a file.
Its own children (producers, consumers, echo workers) are forked from it and
report over pipes; every wait has a deadline.

Every measurement checks that what arrived is what was sent (count, sums,
sampled contents, order where there is one) before it reports a time; a
failed check is an error, never a figure.
"""

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import time
import traceback

import numpy as np

from . import contenders as adapters

_FORK = multiprocessing.get_context("fork")
K = 2                      # distinct payloads per stream (alternating)
SAMPLES = 64               # words checked per payload, spread over it
BASE_ID = 12345            # small messages are (BASE_ID + i, "payload", 3.14)


class CheckFailed(Exception):
    """What arrived is not what was sent."""


class ChildFailed(Exception):
    """A producer, consumer or echo process raised, died or hung."""


# --- the template --------------------------------------------------------------

def serve(preload=()):
    """The template's loop: read a job, fork a measurement, report its pid
    and then its exit status. Exits when the harness closes stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the harness handles Ctrl-C
    for name in preload:
        try:
            __import__(name)
        except Exception:       # a backend that cannot load reports itself later
            pass
    rfd, wfd = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    _write_all(wfd, b"ready\n")
    while True:
        header = _read_exact(rfd, 4)
        if header is None:
            return
        job = pickle.loads(_read_exact(rfd, struct.unpack("!I", header)[0]))
        pid = os.fork()
        if pid == 0:
            _measurement_child(job)        # never returns
        try:
            os.setpgid(pid, pid)           # also done by the child: no race
        except OSError:
            pass
        _write_all(wfd, f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        _write_all(wfd, f"status {status}\n".encode())


def _read_exact(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _measurement_child(job):
    code = 1
    try:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # Keep the template's protocol pipes clean: stdin from /dev/null,
        # stdout and stderr (ours and our children's) to the log.
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            result = {"ok": measure(job)}
        except CheckFailed as e:
            result = {"error": f"integrity check failed: {e}"}
        except ChildFailed as e:
            result = {"error": str(e)}
        except BaseException as e:
            result = {"error": _short(e), "detail": traceback.format_exc()}
        tmp = job["result"] + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.rename(tmp, job["result"])
        code = 0
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _short(exc):
    """One line: where and what."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


# --- dispatch ------------------------------------------------------------------

def measure(job):
    """Run the job's case for its contender; return the figures."""
    kind = job["case"]["kind"]
    if _fault(job) == "stall":
        _stall(job)
    if kind == "ray":
        from . import ray_cases as _bench_ray
        return _bench_ray.measure(job)
    if kind == "aio":
        from . import aio_cases
        return aio_cases.measure(job)
    return {"stream": _stream, "rtt": _rtt, "manager": _manager,
            "handoff": _handoff, "memcpy": _memcpy, "pool": _pool}[kind](job)


def _deadline(job):
    return time.monotonic() + job["env"]["timeout"]


# --- child processes --------------------------------------------------------------

class _Children:
    """Processes forked from the measurement, each reporting once over a pipe."""

    def __init__(self, job):
        self.job = job
        self.procs = []           # (label, process, reader)
        self.barrier = None

    def start(self, roles, target, *args):
        """Fork one process per (role, index) in `roles`; they start working
        together once all have opened their ends (a barrier)."""
        self.barrier = _FORK.Barrier(len(roles))
        for role, index in roles:
            reader, writer = _FORK.Pipe(duplex=False)
            label = f"{role} {index}"
            proc = _FORK.Process(target=_child_main, daemon=True, name=f"bench {label}",
                                 args=(label, writer, target, role, index, self.barrier)
                                 + args)
            proc.start()
            writer.close()
            self.procs.append((label, proc, reader))

    def collect(self, deadline):
        """{label: result}; raises ChildFailed on the first error, death or
        time-out."""
        pending = {reader: (label, proc) for label, proc, reader in self.procs}
        by_sentinel = {proc.sentinel: reader for _, proc, reader in self.procs}
        results = {}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(label for label, _ in pending.values())
                raise ChildFailed(f"timed out after {self.job['env']['timeout']:g} s "
                                  f"waiting for {names}")
            ready = multiprocessing.connection.wait(
                list(pending) + [s for s, r in by_sentinel.items() if r in pending],
                timeout=remaining)
            dead = []
            for obj in ready:
                if obj in pending:
                    label, proc = pending[obj]
                    try:
                        status, value = obj.recv()
                    except EOFError:
                        proc.join(1)
                        raise ChildFailed(f"{label} died (exit code {proc.exitcode}) "
                                          f"without reporting") from None
                    if status != "ok":
                        raise ChildFailed(value)
                    results[label] = value
                    del pending[obj]
                elif obj in by_sentinel:
                    dead.append(by_sentinel[obj])
            for reader in dead:
                if reader in pending and not reader.poll(0):
                    label, proc = pending[reader]
                    proc.join(1)
                    raise ChildFailed(f"{label} died (exit code {proc.exitcode}) "
                                      f"without reporting")
        return results

    def stop(self):
        """Join every child (briefly after a success, not at all after a
        failure); kill what is left."""
        failed = sys.exc_info()[0] is not None
        if self.barrier is not None:
            self.barrier.abort()
        deadline = time.monotonic() + (0 if failed else 5)
        for _, proc, reader in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            reader.close()


def _child_main(label, writer, target, role, index, barrier, *args):
    try:
        value = target(role, index, barrier, *args)
    except BaseException as e:
        msg = f"{label}: {_short(e)}"
        try:
            writer.send(("error", msg))
        except Exception:
            pass
    else:
        writer.send(("ok", value))
    finally:
        writer.close()


def _wait_start(barrier, job):
    barrier.wait(job["env"]["timeout"])


# --- payloads -------------------------------------------------------------------------

class Payloads:
    """K distinct payloads of one size, as bytes or as float64 arrays.

    Word 0 and the last word hold the payload's number k; the other words are
    a cheap pseudo-random pattern (never zero pages, which would flatter the
    copy). A receiver checks the size, both ends and SAMPLES words spread
    over the payload, so a truncated, stale or mixed-up message is caught for
    the cost of a few cache misses.
    """

    def __init__(self, mode, size):
        if size % 8 or size < 16:
            raise ValueError("payload sizes are multiples of 8 bytes, at least 16")
        self.mode = mode
        self.words = words = size // 8
        pattern = np.arange(words, dtype=np.uint64)
        pattern *= np.uint64(0x9E3779B97F4A7C15)
        self.index = np.unique(np.linspace(0, words - 1, SAMPLES).astype(np.intp))
        self.items, self.sums = [], []
        for k in range(K):
            v = pattern + np.uint64(k)
            v[0] = v[-1] = k
            self.sums.append(int(v[self.index].sum()))
            self.items.append(v.tobytes() if mode == "bytes" else v.view(np.float64))
        del pattern

    def check(self, m):
        """k of an intact payload, or -1."""
        if self.mode == "numpy" and not (isinstance(m, np.ndarray) and m.dtype == np.float64
                                         and m.shape == (self.words,)):
            return -1
        v = np.frombuffer(m, dtype=np.uint64)
        if v.size != self.words:
            return -1
        k = int(v[0])
        if k >= K or int(v[-1]) != k or int(v[self.index].sum()) != self.sums[k]:
            return -1
        return k


# --- one-way streams --------------------------------------------------------------------

def _stream(job):
    case = job["case"]
    P, C = case["producers"], case["consumers"]
    if P > 1 and C > 1:
        raise ValueError("a stream has one producer or one consumer")
    per = max(1, -(-job["count"] // P))
    payloads = None if case["payload"] == "small" else Payloads(case["payload"], case["size"])
    adapter = adapters.make(job["contender"], job["env"])
    adapter.setup("stream", case)
    done = _FORK.Value("i", 0)
    children = _Children(job)
    try:
        children.start([("producer", i) for i in range(P)] + [("consumer", i) for i in range(C)],
                       _stream_role, adapter, job, per, payloads, done)
        results = children.collect(_deadline(job))
    finally:
        children.stop()
        adapter.teardown()
    prods = [results[f"producer {i}"] for i in range(P)]
    cons = [results[f"consumer {i}"] for i in range(C)]
    sent = sum(p["sent"] for p in prods)
    got = sum(c["count"] for c in cons)
    if got != sent:
        raise CheckFailed(f"{sent} messages sent, {got} received")
    bad = sum(c["bad"] for c in cons)
    if bad:
        raise CheckFailed(f"{bad} of {got} messages arrived damaged")
    if sum(p["sum"] for p in prods) != sum(c["sum"] for c in cons):
        raise CheckFailed("the checksum of what arrived differs from what was sent "
                          "(lost, duplicated or altered messages)")
    if P == 1 and C == 1 and cons[0]["disorder"]:
        raise CheckFailed(f"{cons[0]['disorder']} messages arrived out of order")
    elapsed = (max(c["t1"] for c in cons) - min(p["t0"] for p in prods)) / 1e9
    out = {"count": got, "elapsed": elapsed, "rate": got / elapsed}
    if case["payload"] == "small":
        out["figure"] = got / elapsed
    else:
        out["figure"] = got * case["size"] / elapsed / 1e9
    return out


def _stream_role(role, index, barrier, adapter, job, per, payloads, done):
    end = adapter.open(role, index)
    case = job["case"]
    fault = _fault(job)
    if role == "producer":
        if fault in ("drop", "corrupt") and index == 0:
            _damage(end, fault, payloads)
        _wait_start(barrier, job)
        t0 = time.monotonic_ns()
        if payloads is None:
            total = _produce_small(end, BASE_ID + index * per, per, case["batch"])
        else:
            total = _produce_payloads(end, per, payloads, case["batch"])
        # One end marker per consumer; N:1 consumers count N markers.
        end.finish(case["consumers"], done, time.monotonic() + job["env"]["timeout"])
        end.close()
        return {"t0": t0, "sent": per, "sum": total}
    need = case["producers"] if case["consumers"] == 1 else 1
    _wait_start(barrier, job)
    if fault == "hang" and index == 0:
        time.sleep(3600)
    if fault == "crash" and index == 0:
        os._exit(3)
    if payloads is None:
        r = _consume_small(end, need, case["batch"])
    else:
        r = _consume_payloads(end, need, payloads, case["batch"])
    with done.get_lock():
        done.value += 1
    end.close()
    return r


def _produce_small(end, first, n, batch):
    stop = first + n
    if batch and end.put_many is not None:
        put_many = end.put_many
        for start in range(first, stop, batch):
            put_many([(i, "payload", 3.14) for i in range(start, min(start + batch, stop))])
    elif batch:
        # No batch call in this transport: the same work, one message at a time.
        put = end.put
        for start in range(first, stop, batch):
            for m in [(i, "payload", 3.14) for i in range(start, min(start + batch, stop))]:
                put(m)
    else:
        put = end.put
        for i in range(first, stop):
            put((i, "payload", 3.14))
    return (first + stop - 1) * n // 2


def _produce_payloads(end, n, payloads, batch):
    items = payloads.items
    if batch and end.put_many is not None:
        for start in range(0, n, batch):
            end.put_many([items[i % K] for i in range(start, min(start + batch, n))])
    else:
        put = end.put
        for i in range(n):
            put(items[i % K])
    return sum(i % K for i in range(n))


def _consume_small(end, need, batch):
    count = total = bad = disorder = 0
    expect = None
    seen = 0
    if batch and end.get_many is not None:
        get_many = end.get_many

        def messages():
            while True:
                yield from get_many()
        source = messages()
        get = source.__next__
    else:
        get = end.get
    while True:
        m = get()
        if m is None:
            seen += 1
            if seen == need:
                break
            continue
        a, b, c = m
        if b != "payload" or c != 3.14:
            bad += 1
        if a != expect and expect is not None:
            disorder += 1
        expect = a + 1
        total += a
        count += 1
    t1 = time.monotonic_ns()
    return {"t1": t1, "count": count, "sum": total, "bad": bad, "disorder": disorder}


def _consume_payloads(end, need, payloads, batch):
    count = total = bad = disorder = 0
    seen = 0
    check = payloads.check
    if batch and end.get_many is not None:
        get_many = end.get_many

        def messages():
            while True:
                yield from get_many()
        get = messages().__next__
    else:
        get = end.get
    while True:
        m = get()
        if len(m) == 0:
            seen += 1
            if seen == need:
                break
            continue
        k = check(m)
        if k < 0:
            bad += 1
        elif k != count % K:
            disorder += 1
        total += k
        count += 1
        del m
    t1 = time.monotonic_ns()
    return {"t1": t1, "count": count, "sum": total, "bad": bad, "disorder": disorder}


# --- faults, for the harness's own tests --------------------------------------------------
# A job may carry {"fault": {"kind": ...}} (mpx.bench.run(_fault=...)): the
# tests use it to prove that damage, loss, hangs and crashes come out as
# errors and never as figures.

def _fault(job):
    return (job.get("fault") or {}).get("kind")


def _damage(end, kind, payloads):
    """Make the producer's first message go missing ("drop") or arrive
    altered ("corrupt"), through the transport's own put."""
    put = end.put
    hit = []

    def faulty_put(m):
        if not hit and m is not end.sentinel:
            hit.append(m)
            if kind == "drop":
                return
            if isinstance(m, tuple):
                m = (m[0], "payloaX", m[2])
            else:
                broken = bytearray(bytes(m))
                at = 8 * int(payloads.index[len(payloads.index) // 2]) + 3
                broken[at] ^= 0xFF
                m = bytes(broken) if isinstance(m, bytes) else \
                    np.frombuffer(broken, dtype=np.float64)
        put(m)
    end.put = faulty_put
    end.put_many = None


def _stall(job):
    """A measurement that ignores its own deadline, with a child doing the
    same: only the harness's watchdog (killing the process group) ends them."""
    child = _FORK.Process(target=time.sleep, args=(3600,), daemon=True)
    child.start()
    with open(job["fault"]["pidfile"], "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    time.sleep(3600)


# --- round trips ---------------------------------------------------------------------

def _rtt(job):
    adapter = adapters.make(job["contender"], job["env"])
    adapter.setup("rtt", job["case"])
    children = _Children(job)
    try:
        children.start([("ping", 0), ("pong", 0)], _rtt_role, adapter, job)
        results = children.collect(_deadline(job))
    finally:
        children.stop()
        adapter.teardown()
    ping, pong = results["ping 0"], results["pong 0"]
    n = job["count"]
    if ping["bad"]:
        raise CheckFailed(f"{ping['bad']} of {n} replies were not the message sent")
    if pong["count"] != n:
        raise CheckFailed(f"{n} pings sent, the echo process saw {pong['count']}")
    elapsed = ping["elapsed"]
    return {"count": n, "elapsed": elapsed, "rate": n / elapsed,
            "figure": elapsed / n * 1e6}


def _rtt_role(role, index, barrier, adapter, job):
    end = adapter.open(role, index)
    put, get = end.put, end.get
    _wait_start(barrier, job)
    if role == "pong" and _fault(job) == "crash":
        os._exit(3)
    if role == "ping":
        bad = 0
        first = BASE_ID
        stop = first + job["count"]
        t0 = time.monotonic_ns()
        for i in range(first, stop):
            put((i, "payload", 3.14))
            r = get()
            if r[0] != i or r[1] != "payload":
                bad += 1
        elapsed = (time.monotonic_ns() - t0) / 1e9
        put(None)
        end.close()
        return {"elapsed": elapsed, "bad": bad}
    count = 0
    while True:
        m = get()
        if m is None:
            break
        put(m)
        count += 1
    end.close()
    return {"count": count}


# --- manager calls ---------------------------------------------------------------------

KEYS = 1024


def _manager(job):
    adapter = adapters.make(job["contender"], job["env"])
    manager = adapter.start()
    try:
        d = manager.dict()
        n = job["count"]
        d[0] = 0        # the first call connects and authenticates: not a call rate
        t0 = time.monotonic_ns()
        for i in range(n):
            d[i & (KEYS - 1)] = i
        elapsed = (time.monotonic_ns() - t0) / 1e9
        got = d.copy()
    finally:
        manager.shutdown()
    expected = {k: k + ((n - 1 - k) // KEYS) * KEYS for k in range(min(n, KEYS))}
    if got != expected:
        wrong = sum(1 for k in expected if got.get(k) != expected[k])
        raise CheckFailed(f"the managed dict holds {len(got)} keys, {wrong} of "
                          f"{len(expected)} with the wrong value")
    return {"count": n, "elapsed": elapsed, "rate": n / elapsed, "figure": n / elapsed}


# --- array hand-off -----------------------------------------------------------------------

def _handoff(job):
    """Send an array to a child and get it back, `count` times.

    The child adds 1 to element 0 and sends what it got back; the parent
    sends back what it received. Only the put/get pair is timed; the checks
    (element 0 counts the trips, sampled elements are intact, and for shared
    memory the parent's own original sees the child's writes) run outside it.
    """
    adapter = adapters.make(job["contender"], job["env"])
    n = job["case"]["size"] // 8
    arr = adapter.make_array(n)
    step = 1 << 23
    for start in range(0, n, step):                  # touch every page, in chunks
        arr[start:start + step] = np.arange(start, min(start + step, n), dtype=np.float64)
    arr[0] = 0.0
    sample = np.unique(np.linspace(1, max(1, n - 1), SAMPLES).astype(np.intp))
    q_in, q_out = adapter.queues()
    children = _Children(job)
    elapsed = 0
    bad = []
    cur = arr
    back = None
    count = job["count"]
    try:
        children.start([("echo", 0)], _echo_role, q_in, q_out, job)
        results = None
        for i in range(1, count + 1):
            t0 = time.monotonic_ns()
            q_in.put(cur)
            back = q_out.get(timeout=job["env"]["timeout"])
            elapsed += time.monotonic_ns() - t0
            if back.shape != (n,) or back[0] != i or not np.array_equal(back[sample], sample):
                bad.append(i)
            if adapter.shares_memory and arr[0] != i:
                raise CheckFailed("the child's write is not visible in the parent's "
                                  "array: the memory is not shared")
            cur, back = back, None      # send back what came back
        q_in.put(None)
        results = children.collect(_deadline(job))
    finally:
        del cur, back                   # release the arrays before the queues go
        for q in (q_in, q_out):
            for name in ("close", "join_thread"):
                method = getattr(q, name, None)
                if method is not None:
                    try:
                        method()
                    except Exception:
                        pass
        children.stop()
    if bad:
        raise CheckFailed(f"{len(bad)} of {count} arrays came back altered")
    if results["echo 0"]["count"] != count:
        raise CheckFailed("the echo process saw a different number of arrays")
    seconds = elapsed / 1e9
    # A hand-off is one way: the figure is half a round trip, in ms.
    return {"count": count, "elapsed": seconds, "rate": count / seconds,
            "figure": seconds / count / 2 * 1e3}


def _echo_role(role, index, barrier, q_in, q_out, job):
    _wait_start(barrier, job)
    count = 0
    timeout = job["env"]["timeout"]
    while True:
        x = q_in.get(timeout=timeout)
        if x is None:
            break
        x[0] += 1.0
        q_out.put(x)
        del x
        count += 1
    for name in ("close", "join_thread"):
        method = getattr(q_out, name, None)
        if method is not None:
            method()
    return {"count": count}


# --- pools --------------------------------------------------------------------------------

POOL_WORKERS = 2


def _pool(job):
    """Map a function that gives back its argument over `count` tasks on a
    pool of POOL_WORKERS, once the workers are up (only the call is timed);
    or, for "create", start and close `count` pools. Every result is checked:
    all tasks, each exactly once, in order for map; sampled words of every
    array."""
    case = job["case"]
    adapter = adapters.make(job["contender"], job["env"])
    adapter.setup("pool", case)
    n = job["count"]
    if case["op"] == "create":
        t0 = time.monotonic_ns()
        for _ in range(n):
            adapter.stop(adapter.start(POOL_WORKERS))
        seconds = (time.monotonic_ns() - t0) / 1e9
        return {"count": n, "elapsed": seconds, "rate": n / seconds,
                "figure": seconds / n * 1e3}
    fn = adapters.pool_echo
    if case["payload"] == "numpy":
        src = np.arange(case["size"] // 8, dtype=np.float64)
        items = [src] * n
    else:
        items = list(range(n))
    call = adapter.imap_unordered if case["op"] == "imap_unordered" else adapter.map
    pool = adapter.start(POOL_WORKERS)
    try:
        warm = list(range(4 * POOL_WORKERS))
        if sorted(call(pool, fn, warm, 1)) != warm:
            raise CheckFailed("the warm-up tasks came back wrong")
        t0 = time.monotonic_ns()
        out = call(pool, fn, items, case["chunksize"])
        seconds = (time.monotonic_ns() - t0) / 1e9
    finally:
        adapter.stop(pool)
    out = list(out)
    if len(out) != n:
        raise CheckFailed(f"{len(out)} results for {n} tasks")
    if case["payload"] == "numpy":
        sample = np.unique(np.linspace(0, len(src) - 1, SAMPLES).astype(np.intp))
        bad = sum(1 for r in out if r.shape != src.shape
                  or not np.array_equal(r[sample], src[sample]))
        if bad:
            raise CheckFailed(f"{bad} of {n} arrays came back altered")
        figure = n * case["size"] / seconds / 1e9
    else:
        if (sorted(out) if case["op"] == "imap_unordered" else out) != items:
            raise CheckFailed("the results are not the tasks' (lost, repeated or "
                              "out of order)")
        figure = n / seconds
    return {"count": n, "elapsed": seconds, "rate": n / seconds, "figure": figure}


# --- the ceiling -------------------------------------------------------------------------

def _memcpy(job):
    """Single-core copy bandwidth: numpy copying a buffer far larger than
    the caches, repeated for the job's duration."""
    n = job["case"]["size"]
    src = np.frombuffer(os.urandom(1 << 20), dtype=np.uint8)
    src = np.tile(src, n >> 20)
    dst = np.empty_like(src)
    np.copyto(dst, src)                  # fault every page in before timing
    dst[:] = 0
    copies = 0
    duration = job["duration"]
    t0 = time.monotonic_ns()
    while True:
        np.copyto(dst, src)
        copies += 1
        elapsed = (time.monotonic_ns() - t0) / 1e9
        if copies >= 3 and elapsed >= duration:
            break
    if not np.array_equal(dst[::4096], src[::4096]) or dst[-1] != src[-1]:
        raise CheckFailed("the copy differs from the source")
    return {"count": copies, "elapsed": elapsed, "rate": copies / elapsed,
            "figure": copies * n / elapsed / 1e9}


if __name__ == "__main__":
    serve(sys.argv[1:])
