"""The benchmark's cases and who runs in each.

A case names what is measured (kind, payload, size, producers:consumers,
batch), its unit, which peers take part, and whether ``--quick`` runs it.
The mpx contenders of a case are not listed here: they come from the backend
registry at run time (every backend available for the case's families), so a
backend that lands shows up in the benchmark without an edit here.
"""

import fnmatch
import importlib

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# unit -> (higher is better, how to print it)
UNITS = {
    "msg/s": True,
    "GB/s": True,
    "calls/s": True,
    "tasks/s": True,
    "us": False,         # microseconds per round trip
    "ms": False,         # milliseconds per hand-off
}

# Peers: name -> (module it needs, what to install, one line).
PEERS = {
    "mp.Queue": (None, None, "multiprocessing.Queue (feeder thread, pipe)"),
    "mp.SimpleQueue": (None, None, "multiprocessing.SimpleQueue (pipe, locks)"),
    "mp.Pipe": (None, None, "multiprocessing.Pipe"),
    "mp.Manager": (None, None, "multiprocessing.Manager() (unix socket)"),
    "mp.Manager(tcp)": (None, None, "multiprocessing SyncManager over TCP on 127.0.0.1"),
    "mp.Queue(ndarray)": (None, None, "a plain ndarray through multiprocessing.Queue"),
    "faster-fifo": ("faster_fifo", "faster-fifo", "faster-fifo Queue (shared-memory circular buffer)"),
    "zmq PUSH/PULL": ("zmq", "pyzmq", "pyzmq PUSH/PULL over ipc://"),
    "zmq PAIR": ("zmq", "pyzmq", "pyzmq PAIR over ipc://"),
    "posix_ipc+pickle": ("posix_ipc", "posix_ipc", "posix_ipc.MessageQueue + pickle"),
    "sysv_ipc+pickle": ("sysv_ipc", "sysv_ipc", "sysv_ipc.MessageQueue + pickle"),
    "mp.Pool": (None, None, "multiprocessing.Pool (fork, pipes, a feeder thread)"),
    "mp.ProcessPoolExecutor": (None, None, "concurrent.futures.ProcessPoolExecutor on "
                               "multiprocessing's fork context"),
    "loky": ("loky", "loky", "loky.ProcessPoolExecutor (joblib's executor)"),
    "mpire": ("mpire", "mpire", "mpire.WorkerPool (fork, keep_alive)"),
}

# The Ray and asyncio cases and peers live in their own modules.
from . import aio_cases as _bench_aio  # noqa: E402
from . import ray_cases as _bench_ray  # noqa: E402
PEERS.update(_bench_ray.PEERS)
PEERS.update(_bench_aio.PEERS)

_POOL_PEERS = ("mp.Pool", "mp.ProcessPoolExecutor", "loky", "mpire")

_QUEUE_SMALL_PEERS = ("mp.Queue", "mp.SimpleQueue", "faster-fifo", "zmq PUSH/PULL",
                      "posix_ipc+pickle", "sysv_ipc+pickle")
_QUEUE_LARGE_PEERS = ("mp.Queue", "mp.SimpleQueue", "faster-fifo", "zmq PUSH/PULL")


def _case(name, title, kind, families, unit, peers, quick, **kw):
    case = {
        "name": name, "title": title, "kind": kind, "families": families,
        "unit": unit, "peers": peers, "quick": quick,
        "payload": "small", "size": 0, "producers": 1, "consumers": 1, "batch": 0,
        # counts: the smoke test's, the calibration run's, and the bounds of
        # the count the calibration picks for the timed repetitions
        "smoke": 50, "pilot": 2000, "min": 200, "max": 2_000_000,
        "timeout": 30.0, "in_smoke": True, "calibrate": True, "max_reps": None,
        # mpx contenders that are not a registry family (the pool cases'),
        # and the shortest timed repetition the case accepts (seconds; pool
        # runs vary more than queue runs, so --quick must not cut them short)
        "mpx": (), "min_duration": 0.0,
        # pool cases: the call ("map", "imap_unordered", "create") and its
        # chunksize (None: the pool's default)
        "op": None, "chunksize": None,
    }
    case.update(kw)
    return case


def _size_name(size):
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= div and size % div == 0:
            return f"{size // div}{unit}"
    return f"{size}B"


def _counts(size):
    """(smoke, pilot, min, max) message counts for payloads of `size` bytes."""
    if size <= 4 * KiB:
        return 50, 2000, 200, 2_000_000
    if size <= 256 * KiB:
        return 20, 200, 50, 200_000
    if size <= 4 * MiB:
        return 6, 32, 16, 20_000
    return 2, 2, 3, 200


def _build():
    cases = []
    add = cases.append
    q = ("Queue",)
    add(_case("queue-small", "small objects 1:1, put/get", "stream", q, "msg/s",
              _QUEUE_SMALL_PEERS, True))
    add(_case("queue-small-batch", "small objects 1:1, put_many/get_many of 256", "stream",
              q, "msg/s", ("mp.Queue", "faster-fifo"), True, batch=256,
              pilot=5000, min=1000, max=5_000_000))
    add(_case("queue-small-4to1", "small objects 4:1", "stream", q, "msg/s",
              _QUEUE_SMALL_PEERS, True, producers=4))
    add(_case("queue-small-1to4", "small objects 1:4", "stream", q, "msg/s",
              _QUEUE_SMALL_PEERS, True, consumers=4))
    for payload in ("bytes", "numpy"):
        for size in (KiB, 64 * KiB, MiB, 64 * MiB):
            smoke, pilot, lo, hi = _counts(size)
            peers = _QUEUE_SMALL_PEERS if size <= KiB else _QUEUE_LARGE_PEERS
            quick = size == MiB or (payload == "bytes" and size == KiB)
            add(_case(f"queue-{payload}-{_size_name(size)}",
                      f"{_size_name(size)} {payload} 1:1", "stream", q, "GB/s", peers,
                      quick, payload=payload, size=size, smoke=smoke, pilot=pilot,
                      min=lo, max=hi, timeout=60.0 if size >= 64 * MiB else 30.0))
    for p, c in ((4, 1), (1, 4)):
        smoke, pilot, lo, hi = _counts(MiB)
        add(_case(f"queue-bytes-1MiB-{p}to{c}", f"1MiB bytes {p}:{c}", "stream", q,
                  "GB/s", _QUEUE_LARGE_PEERS, False, payload="bytes", size=MiB,
                  producers=p, consumers=c, smoke=max(smoke, 8), pilot=pilot, min=lo, max=hi))
    pipe = ("Pipe",)
    add(_case("pipe-small", "small objects one way, send/recv", "stream", pipe, "msg/s",
              ("mp.Pipe", "zmq PAIR"), True))
    for size in (KiB, 64 * KiB, MiB, 64 * MiB):
        smoke, pilot, lo, hi = _counts(size)
        add(_case(f"pipe-bytes-{_size_name(size)}",
                  f"{_size_name(size)} send_bytes/recv_bytes", "stream", pipe, "GB/s",
                  ("mp.Pipe", "zmq PAIR"), size == MiB, payload="bytes", size=size,
                  smoke=smoke, pilot=pilot, min=lo, max=hi,
                  timeout=60.0 if size >= 64 * MiB else 30.0))
    add(_case("roundtrip", "round trip (ping-pong) of a small object", "rtt",
              ("Pipe", "Queue"), "us",
              ("mp.Pipe", "mp.Queue", "mp.SimpleQueue", "faster-fifo", "zmq PAIR"), True,
              smoke=20, pilot=500, min=200, max=500_000))
    add(_case("manager-setitem", "Manager: d[k] = v calls", "manager", ("Manager",),
              "calls/s", ("mp.Manager", "mp.Manager(tcp)"), True,
              smoke=20, pilot=300, min=200, max=1_000_000))
    for size in (MiB, 16 * MiB, 256 * MiB, GiB):
        huge = size >= 256 * MiB
        # The peer pickles the whole array both ways: at 1 GiB one round trip
        # takes many seconds here, so the huge sizes calibrate on a single
        # hand-off, may run just one per repetition, and repeat at most 3 times.
        add(_case(f"sharedarray-{_size_name(size)}",
                  f"SharedArray hand-off {_size_name(size)} (one way)", "handoff",
                  ("SharedArray",), "ms", ("mp.Queue(ndarray)",), size <= 16 * MiB,
                  payload="numpy", size=size, smoke=2, pilot=1 if huge else 2,
                  min=1 if huge else 3, max=2000, max_reps=3 if huge else None,
                  timeout=300.0 if huge else 60.0, in_smoke=not huge))
    # Pools of 2 workers (fork): a trivial function mapped over many tasks,
    # 1 MiB arrays as tasks and results, and starting and closing a pool.
    pool = dict(families=(), kind="pool", mpx=("mpx.Pool",), min_duration=0.25,
                smoke=20, pilot=500, min=200, max=1_000_000, timeout=60.0)
    add(_case("pool-map-chunk1", "Pool(2).map(f, range(n), chunksize=1), trivial f",
              unit="tasks/s", peers=_POOL_PEERS, quick=True, op="map", chunksize=1, **pool))
    add(_case("pool-imap-unordered-chunk1", "Pool(2).imap_unordered(f, ..., chunksize=1)",
              unit="tasks/s", peers=_POOL_PEERS, quick=False, op="imap_unordered",
              chunksize=1, **pool))
    add(_case("pool-map-default", "Pool(2).map(f, range(n)), default chunksize",
              unit="tasks/s", peers=_POOL_PEERS, quick=False, op="map", chunksize=None,
              **dict(pool, pilot=5000, min=2000, max=20_000_000)))
    add(_case("pool-map-numpy-1MiB", "Pool(2).map(f, arrays, chunksize=1), 1MiB arrays "
              "in and out", unit="GB/s", peers=_POOL_PEERS, quick=False, op="map",
              chunksize=1, payload="numpy", size=MiB,
              **dict(pool, smoke=4, pilot=16, min=16, max=400)))
    add(_case("pool-create", "Pool(2) created, then closed and joined", unit="ms",
              peers=("mp.Pool", "mpire"), quick=True, op="create",
              **dict(pool, smoke=1, pilot=2, min=2, max=200)))
    add(_case("executor-map", "ProcessPoolExecutor(2, mp_context=...).map(f, range(n)), "
              "trivial f", unit="tasks/s", peers=("mp.ProcessPoolExecutor", "loky"),
              quick=True, op="map", chunksize=1,
              **dict(pool, mpx=("mpx.futures.ProcessPoolExecutor",
                                "mp.ProcessPoolExecutor(mpx context)"))))
    # The ceiling the targets use: one core copying a buffer far larger than
    # the caches. A 1 MiB message can move faster than that (it stays in
    # cache), so the in-cache figure is measured too, for the reader.
    add(_case("memcpy", "memcpy ceiling: numpy copy of 256MiB, one core", "memcpy",
              (), "GB/s", (), True, payload="bytes", size=256 * MiB, smoke=1, pilot=1,
              min=1, max=1, calibrate=False))
    add(_case("memcpy-1MiB", "memcpy of 1MiB (in cache), one core", "memcpy",
              (), "GB/s", (), True, payload="bytes", size=MiB, smoke=1, pilot=1,
              min=1, max=1, calibrate=False))
    cases += _bench_aio.cases(_case)
    cases += _bench_ray.cases(_case)
    return cases


CASES = _build()
CASE_NAMES = [c["name"] for c in CASES]


def select(pattern=None, quick=False, smoke=False):
    """The cases to run: `pattern` is comma-separated globs (a pattern with no
    wildcard matches the case of that name, or else as a substring). --quick
    keeps its own set; the smoke form runs every case except the largest
    sizes."""
    chosen = [c for c in CASES if c["quick"]] if quick else list(CASES)
    if smoke:
        chosen = [c for c in CASES if c["in_smoke"]]
    if pattern:
        globs = [p.strip() for p in pattern.split(",") if p.strip()]
        globs = [g if any(ch in g for ch in "*?[") or g in CASE_NAMES else f"*{g}*"
                 for g in globs]
        # An explicit pattern may pick any case, quick or not.
        pool = [c for c in CASES if c["in_smoke"]] if smoke else CASES
        chosen = [c for c in pool if any(fnmatch.fnmatchcase(c["name"], g) for g in globs)]
        if not chosen:
            raise ValueError(f"no benchmark case matches {pattern!r}; the cases are: "
                             + ", ".join(CASE_NAMES))
    return chosen


def peer_status():
    """{peer: None if usable, else why not}, plus versions for the report."""
    status, versions = {}, {}
    for name, (module, dist, _) in PEERS.items():
        if module is None:
            status[name] = None
            continue
        try:
            mod = importlib.import_module(module)
        except Exception as e:
            status[name] = (f"missing: {dist} is not installed ({type(e).__name__}: {e}); "
                            f"pip install 'mpx[bench]'")
        else:
            status[name] = None
            versions[dist] = _version(dist, mod)
    return status, versions


def _version(dist, mod):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return getattr(mod, "__version__", "?")


def mpx_backends(family):
    """[(backend, None or the reason it is not available)] for `family`, in the
    registry's order of preference, then any other backend providing it."""
    from .. import backends as registry
    rows = {r["name"]: r for r in registry.backends()}
    names = list(registry.PREFERENCE.get(family, ()))
    names += [n for n, r in rows.items() if family in r["families"] and n not in names]
    out = []
    for name in names:
        if name == "ray":
            continue    # measured in the ray-* cases (these fork, Ray does not)
        row = rows.get(name)
        if row is None:
            out.append((name, "not in this version's backend registry"))
        elif family in row["families"]:
            out.append((name, None))
        elif row["reason"]:
            out.append((name, row["reason"]))
        else:
            out.append((name, f"backend {name!r} does not provide {family} yet"))
    return out


def contenders(case, peers):
    """The case's contenders: [{name, adapter, backend, kind, unavailable}]."""
    if case.get("requires") == _bench_ray.REQUIRES and _bench_ray.unavailable():
        peers = dict(peers, **{p: _bench_ray.unavailable() for p in case["peers"]})
    out = []
    for family in case["families"]:
        for backend, reason in mpx_backends(family):
            out.append({"name": f"mpx.{family}[{backend}]", "adapter": f"mpx.{family}",
                        "backend": backend, "side": "mpx", "unavailable": reason})
    for name in case["mpx"]:
        out.append({"name": name, "adapter": name, "backend": None, "side": "mpx",
                    "unavailable": _bench_ray.unavailable()
                    if case.get("requires") == _bench_ray.REQUIRES else None})
    if case["kind"] == "memcpy":
        out.append({"name": "numpy copy", "adapter": "numpy copy", "backend": None,
                    "side": "ceiling", "unavailable": None})
    for peer in case["peers"]:
        out.append({"name": peer, "adapter": peer, "backend": None, "side": "peer",
                    "unavailable": peers.get(peer)})
    return out
