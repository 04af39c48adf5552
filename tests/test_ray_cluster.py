"""Two Ray nodes on this machine (tests/programs/ray_two_nodes.py, run as
its own driver: a process has one Ray connection, and this run's tests
hold one to the session instance). What a lost node does to a named queue
and to a pool, with every wait bounded."""

import json
import os

import pytest

from ray_helpers import ray_or_skip, run_driver

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs",
                       "ray_two_nodes.py")


def scenario(name):
    ray_or_skip()
    code = (f"import runpy, sys; sys.argv = [{PROGRAM!r}, {name!r}]; "
            f"runpy.run_path({PROGRAM!r}, run_name='__main__')")
    rc, out, err = run_driver(code, timeout=150, RAY_ADDRESS="")
    assert rc == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(180)
def test_producer_and_consumer_on_two_nodes_exchange_every_message_in_order():
    found = scenario("queue")
    assert found == {"in_order": True, "count": 10_000, "left": 0}


@pytest.mark.timeout(180)
def test_losing_the_consumers_node_fails_its_call_and_loses_no_acknowledged_message():
    found = scenario("kill-consumer")
    assert found["error"] and found["error"].startswith(("NodeDiedError", "WorkerCrashedError")), found
    assert found["failed_after"] < 60
    assert found["acked_in_order"] and found["left_in_order"], found
    # Only the batch the consumer had taken when its node died (at most 10
    # items, never acknowledged) may be missing.
    assert 0 <= found["lost"] <= 10, found


@pytest.mark.timeout(180)
def test_losing_a_node_fails_the_tasks_its_worker_held_and_the_pool_goes_on():
    found = scenario("pool")
    assert found["nodes_used"] == 2, found
    assert found["other"] == [], found
    assert found["ok"] + found["lost"] == 60
    # The lost worker held at most its two queued calls of one 50 ms task each.
    assert 1 <= found["lost"] <= 2, found
    assert "WorkerLostError" not in found["lost_example"][0]
    assert "was lost" in found["lost_example"][0]
    assert found["after"], found
