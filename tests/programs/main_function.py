"""A function defined only under `if __name__ == "__main__":`, sent to a spawn child.

Run as: python main_function.py SERIALIZER ; prints what the child saw.
"""
import sys

import mpx


def call_it(inq, outq):
    try:
        f = inq.get(timeout=30)
        outq.put(("ok", f(2)))
    except AttributeError as e:
        outq.put(("error", str(e)))


if __name__ == "__main__":
    def triple(x):          # not visible to a spawned child's __mp_main__
        return 3 * x

    ctx = mpx.get_context("spawn")
    inq, outq = ctx.Queue(serializer=sys.argv[1]), ctx.Queue()
    p = ctx.Process(target=call_it, args=(inq, outq))
    p.start()
    inq.put(triple)
    print(*outq.get(timeout=60))
    p.join(30)
