"""Two Ray nodes on this machine (ray.cluster_utils.Cluster): a head with
the custom resource "node_a" and a second node with "node_b", one CPU each.
Runs one scenario (argv[1]) and prints its findings as one JSON line; the
cluster is shut down whatever happens. Driven by tests/test_ray_cluster.py.

- "queue": a producer task on node_a and a consumer task on node_b exchange
  10,000 messages through a named mpx queue.
- "kill-consumer": a consumer on node_b acknowledges each batch it takes
  (into a second queue); node_b is removed while it works.
- "pool": mpx.Pool(2, backend="ray") has a worker on each node; node_b is
  removed in the middle of 60 tasks.
"""

import json
import sys
import time

import ray
from ray.cluster_utils import Cluster

import mpx
import ray_tasks

N = 10_000


def on(node, func):
    # Pinned by a custom resource; no CPU, so the pool's actors keep theirs.
    return ray.remote(num_cpus=0, resources={node: 0.01}, max_retries=0)(func)


def scenario_queue(cluster):
    q = mpx.Queue(backend="ray", name="two-nodes")
    acks = mpx.Queue(backend="ray")
    try:
        consumer = on("node_b", ray_tasks.consume).remote(q, N, acks)
        producer = on("node_a", ray_tasks.produce).remote(q, N, 250)
        ray.get([producer, consumer], timeout=120)
        got = []
        while len(got) < N:
            got += acks.get_many(timeout=30)
        return {"in_order": got == list(range(N)), "count": len(got),
                "left": q.qsize()}
    finally:
        q.unlink()


def scenario_kill_consumer(cluster, node_b):
    q = mpx.Queue(backend="ray", name="two-nodes-kill")
    acks = mpx.Queue(backend="ray")
    try:
        q.put_many(range(N))
        consumer = on("node_b", ray_tasks.consume_slowly).remote(q, acks)
        acked = []
        while len(acked) < 200:
            acked += acks.get_many(timeout=60)
        cluster.remove_node(node_b)
        t = time.monotonic()
        try:
            ray.get(consumer, timeout=120)
            error = None
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failed_after = time.monotonic() - t
        while True:
            try:
                acked += acks.get_many(timeout=1)
            except mpx.queues.Empty:
                break
        left = q.get_many(timeout=5)
        return {"error": error, "failed_after": failed_after, "acked": len(acked),
                "acked_in_order": acked == list(range(len(acked))),
                "left_in_order": left == list(range(N - len(left), N)),
                "lost": N - len(acked) - len(left)}
    finally:
        q.unlink()


def scenario_pool(cluster, node_b):
    from mpx.pool import WorkerLostError
    with mpx.Pool(2, backend="ray") as pool:
        nodes = {n for _, n in pool.map(ray_tasks.node_of, range(8), chunksize=1)}
        results = [pool.apply_async(ray_tasks.node_of, (i,)) for i in range(60)]
        time.sleep(0.6)
        cluster.remove_node(node_b)
        t = time.monotonic()
        ok, lost, other = [], [], []
        for r in results:
            try:
                x, node = r.get(timeout=120)
                ok.append(x)
                nodes.add(node)
            except WorkerLostError as e:
                lost.append(str(e))
            except Exception as e:
                other.append(repr(e))
        after = pool.map(ray_tasks.square, range(10), chunksize=1)
        return {"nodes_used": len(nodes), "ok": len(ok), "lost": len(lost),
                "lost_example": lost[:1], "other": other, "seconds": time.monotonic() - t,
                "after": after == [x * x for x in range(10)]}


def main():
    which = sys.argv[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False})
    try:
        node_b = cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        if which == "queue":
            found = scenario_queue(cluster)
        elif which == "kill-consumer":
            found = scenario_kill_consumer(cluster, node_b)
        else:
            found = scenario_pool(cluster, node_b)
        print(json.dumps(found), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
