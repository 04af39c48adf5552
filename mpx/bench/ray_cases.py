"""The benchmark's Ray cases: mpx's ray backend against Ray's own objects.

Each measurement runs in the harness's fresh measurement process (see
``mpx.bench.worker``), which starts a local Ray instance (``num_cpus=2``,
no dashboard; about 4 s here, not timed), measures one contender and shuts
Ray down again. A Ray connection does not survive fork, so the generic
cases, which fork producers and consumers, leave the ray backend out; these
cases are its own, and are not in ``--quick`` (starting Ray for every
measurement is not quick). Without Ray installed every contender of these
cases is reported as skipped: "ray not installed".

- ``ray-queue-small``: one ``put`` then one ``get`` of a small object, over
  and over, from the driver (the actor round trips are what is measured).
- ``ray-queue-small-batch``: ``put_many``/``get_many`` of 256, against Ray's
  queue one by one (what the issue's target compares) and with its own
  batch calls (``put_nowait_batch``/``get_nowait_batch``).
- ``ray-pool-map-default`` / ``ray-pool-map-chunk1``: ``Pool(2).map`` of a
  trivial function, against ``ray.util.multiprocessing.Pool``; only the map
  call is timed, after a warm-up map has brought both workers up.
"""

import importlib.util
import time

__all__ = ["PEERS", "REQUIRES", "cases", "measure", "unavailable"]

# Peers: name -> (module it needs, what to install, one line).
PEERS = {
    "ray Queue": ("ray", "ray", "ray.util.queue.Queue, one put/get per call"),
    "ray Queue(batch)": ("ray", "ray", "ray.util.queue.Queue put_nowait_batch/"
                         "get_nowait_batch"),
    "ray Pool": ("ray", "ray", "ray.util.multiprocessing.Pool"),
}

REQUIRES = "ray"
WORKERS = 2
SMALL = (12345, "payload", 3.14)


def unavailable():
    """Why these cases cannot run here (None when they can)."""
    if importlib.util.find_spec("ray") is None:
        return 'ray not installed (pip install "mpx[ray]")'
    return None


def cases(make):
    """The Ray cases, made with the harness's case constructor."""
    # Calibrated (one more Ray start per contender) because Ray's queue and
    # mpx's batches differ a hundredfold; each timed run lasts about 1 s.
    # Two of them in the smoke run (each measurement starts Ray: ~5 s).
    common = dict(kind="ray", families=(), quick=False, requires=REQUIRES,
                  max_reps=3, timeout=120.0, min_duration=1.0)
    return [
        make("ray-queue-small", "Ray: small objects, put then get, one by one",
             unit="msg/s", peers=("ray Queue",), mpx=("mpx.Queue[ray]",), op="one",
             smoke=20, pilot=100, min=100, max=100_000, in_smoke=False, **common),
        make("ray-queue-small-batch", "Ray: small objects, put_many/get_many of 256",
             unit="msg/s", peers=("ray Queue", "ray Queue(batch)"),
             mpx=("mpx.Queue[ray]",), op="batch", batch=256, smoke=256, pilot=256,
             min=256, max=2_000_000, **common),
        make("ray-pool-map-default", "Ray: Pool(2).map(f, range(n)), default chunksize",
             unit="tasks/s", peers=("ray Pool",), mpx=("mpx.Pool[ray]",), op="map",
             chunksize=None, smoke=100, pilot=20_000, min=20_000, max=20_000_000,
             in_smoke=False, **common),
        make("ray-pool-map-chunk1", "Ray: Pool(2).map(f, range(n), chunksize=1)",
             unit="tasks/s", peers=("ray Pool",), mpx=("mpx.Pool[ray]",), op="map",
             chunksize=1, smoke=50, pilot=500, min=500, max=1_000_000, **common),
    ]


def echo(x):
    return x


def measure(job):
    """One measurement of a Ray case (in a fresh measurement process)."""
    import ray
    case, name, n = job["case"], job["contender"]["name"], job["count"]
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        if case["name"].startswith("ray-queue"):
            seconds = _queue(name, case, n)
        else:
            seconds = _pool(name, case, n)
    finally:
        ray.shutdown()
    return {"count": n, "elapsed": seconds, "rate": n / seconds, "figure": n / seconds}


class _Failed(Exception):
    pass


def _queue(name, case, n):
    if name.startswith("mpx"):
        import mpx
        q = mpx.Queue(backend="ray")
        put, get = q.put, q.get
        put_many, get_many = q.put_many, (lambda k: q.get_many(k, timeout=60))
    else:
        from ray.util.queue import Queue
        q = Queue()
        put, get = q.put, q.get
        if name == "ray Queue(batch)":
            put_many, get_many = q.put_nowait_batch, q.get_nowait_batch
        else:
            def put_many(items):
                for item in items:
                    q.put(item)

            def get_many(k):
                return [q.get(timeout=60) for _ in range(k)]
    put(SMALL)
    if get() != SMALL:
        raise _Failed("the warm-up message came back wrong")
    got = []
    t0 = time.monotonic_ns()
    if case["op"] == "one":
        for i in range(n):
            put((i,) + SMALL)
            got.append(get())
    else:
        batch = case["batch"]
        for start in range(0, n, batch):
            k = min(batch, n - start)
            put_many([(i,) + SMALL for i in range(start, start + k)])
            while k:
                items = get_many(k)
                got += items
                k -= len(items)
    seconds = (time.monotonic_ns() - t0) / 1e9
    if got != [(i,) + SMALL for i in range(n)]:
        raise _Failed("the messages that came back are not the ones put (lost, "
                      "repeated or out of order)")
    return seconds


def _pool(name, case, n):
    if name.startswith("mpx"):
        import mpx
        pool = mpx.Pool(WORKERS, backend="ray")
    else:
        from ray.util.multiprocessing import Pool
        pool = Pool(WORKERS)
    try:
        warm = list(range(4 * WORKERS))
        if pool.map(echo, warm, 1) != warm:
            raise _Failed("the warm-up tasks came back wrong")
        items = list(range(n))
        t0 = time.monotonic_ns()
        out = pool.map(echo, items, case["chunksize"])
        seconds = (time.monotonic_ns() - t0) / 1e9
    finally:
        pool.terminate()
    if out != items:
        raise _Failed("the results are not the tasks' (lost, repeated or out of order)")
    return seconds
