"""A program written for multiprocessing, with only its import line changed.

Run as: python classic.py START_METHOD
"""
import mpx as multiprocessing
import sys


def square(x):
    return x * x


def worker(q, conn, lock, counter, shared):
    with lock:
        counter.value += 1
    shared["worker"] = multiprocessing.current_process().name
    q.put(("queue", sum(range(10))))
    conn.send(("pipe", conn.recv() * 2))
    conn.close()


def apply_later(q):
    f = q.get(timeout=30)
    q.put(f(20))


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    q = multiprocessing.Queue()
    parent, child = multiprocessing.Pipe()
    lock = multiprocessing.Lock()
    counter = multiprocessing.Value("i", 0)
    with multiprocessing.Manager() as manager:
        shared = manager.dict()
        procs = [multiprocessing.Process(target=worker, args=(q, child, lock, counter, shared))
                 for _ in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            parent.send(21)
        results = sorted([q.get(timeout=30) for _ in procs] + [parent.recv() for _ in procs])
        for p in procs:
            p.join(30)
            assert p.exitcode == 0, p.exitcode
        assert results == [("pipe", 42)] * 2 + [("queue", 45)] * 2, results
        assert counter.value == 2
        assert shared["worker"].startswith("Process-")
    with multiprocessing.Pool(2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
    # A lambda through an mpx Queue to a child and back, working.
    k = 2
    q2 = multiprocessing.Queue()
    p = multiprocessing.Process(target=apply_later, args=(q2,))
    p.start()
    q2.put(lambda x: x + k)
    p.join(30)
    assert q2.get(timeout=30) == 22
    print("ok", sys.argv[1])
