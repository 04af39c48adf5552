"""The benchmark harness (``python -m mpx bench``): correctness only.

Never asserts on speed. What it checks:
- every case that can run here runs in its smoke form (tiny counts) for
  every contender, and each either delivers intact (a positive figure) or
  says why it did not run (backend not available, peer missing);
- damage, loss, a hang, a crash and a stalled measurement come out as errors
  with a message, never as figures, within a bounded time, leaving nothing
  behind;
- the command line writes the table, JSON, Markdown and the chart.
"""

import json
import math
import subprocess
import sys
import time

import pytest

from mpx import bench
from mpx.bench import cases as cases_mod
from mpx.bench import report, runner

SMOKE_CASES = [c["name"] for c in cases_mod.CASES if c["in_smoke"]]
ALWAYS = "mp.*,mpx.*[pipe]"        # the stdlib peers and mpx's stdlib-based backend


@pytest.fixture(scope="module")
def smoke_results():
    # One run for the module (about 20-40 s here); the conftest's leak check
    # is per test, so the kernel peers get their own test below as well.
    return bench.run(smoke=True, timeout=60)


def _case(results, name):
    return next(c for c in results["cases"] if c["name"] == name)


@pytest.mark.timeout(400)          # the first one pays for the module's smoke run
@pytest.mark.parametrize("name", SMOKE_CASES)
def test_smoke_case(smoke_results, name):
    case = _case(smoke_results, name)
    assert case["contenders"], name
    problems = []
    for c in case["contenders"]:
        if c["status"] == "ok":
            assert len(c["figures"]) == 1
            assert c["median"] > 0 and math.isfinite(c["median"]), c
            assert c["counts"][0] >= 1
        elif c["status"] in ("unavailable", "missing"):
            assert c["reason"], c           # never silently skipped
        else:
            problems.append(f"{c['name']}: {c.get('error')}\n{c.get('detail', '')}")
    assert not problems, "\n".join(problems)
    if name.startswith("ray-") and all(c["status"] != "ok" for c in case["contenders"]):
        pytest.skip(case["contenders"][0]["reason"])    # ray not installed
    # The stdlib peers always exist, so every case measured something real.
    assert any(c["status"] == "ok" for c in case["contenders"])


def test_smoke_run_removed_its_named_objects(smoke_results):
    from mpx.bench.contenders import exists
    named = smoke_results["named_objects"]
    kinds = {e["kind"] for e in named}
    assert [e for e in named if exists(e)] == []
    # The raw kernel-queue peers ran, so there was something to remove.
    peers = smoke_results["peers"]
    if peers.get("posix_ipc+pickle") is None:
        assert "posix_mq" in kinds
    if peers.get("sysv_ipc+pickle") is None:
        assert "sysv_msg" in kinds


def test_kernel_queue_peers_leave_nothing():
    """Under the conftest's per-test leak check: the peers that create named
    kernel objects, and mpx's own named-queue backends."""
    results = bench.run(cases="queue-small,queue-bytes-1KiB", smoke=True,
                         contenders="posix_ipc+pickle,sysv_ipc+pickle,zmq*,"
                                    "mpx.Queue[posix],mpx.Queue[sysv]")
    for case in results["cases"]:
        for c in case["contenders"]:
            assert c["status"] in ("ok", "missing", "unavailable"), c


def test_smoke_results_render(smoke_results):
    table = bench.format_table(smoke_results, every=True)
    assert "SMOKE RUN" in table
    for name in SMOKE_CASES:
        assert name in table
    md = bench.format_markdown(smoke_results)
    assert md.splitlines()[2].startswith("| case | mpx |")
    # Smoke figures are never judged against the targets.
    assert all(t["state"] == "not measured" for t in smoke_results["targets"])
    # The --json form is plain JSON (the "_" keys are this test's own).
    json.dumps({k: v for k, v in smoke_results.items() if not k.startswith("_")})


def test_unavailable_backends_are_reported(smoke_results):
    """Every backend the registry knows but cannot use shows its reason."""
    rows = {r["name"]: r for r in smoke_results["backends"]}
    for case in smoke_results["cases"]:
        for c in case["contenders"]:
            if c["side"] == "mpx" and c["status"] == "unavailable":
                assert c["reason"]
                if c["backend"] in rows and not rows[c["backend"]]["available"]:
                    assert c["reason"] in report._dedupe(rows[c["backend"]]["reason"])


# --- failures are errors, never figures ------------------------------------------------

@pytest.mark.parametrize("case,fault", [
    ("queue-small", "drop"),
    ("queue-small", "corrupt"),
    ("queue-small-batch", "corrupt"),
    ("queue-small-4to1", "drop"),
    ("queue-bytes-1KiB", "drop"),
    ("queue-numpy-1MiB", "corrupt"),
    ("pipe-bytes-64KiB", "corrupt"),
])
def test_damage_is_an_error(case, fault):
    results = bench.run(cases=case, smoke=True, contenders=ALWAYS,
                         _fault={"kind": fault}, timeout=30)
    rows = _case(results, case)["contenders"]
    assert rows
    for c in rows:
        assert c["status"] == "error", c
        assert "integrity check failed" in c["error"], c
        assert not c["figures"]
    assert "ERROR" in bench.format_table(results)
    assert report._errors(results)


def test_hang_times_out():
    t0 = time.monotonic()
    results = bench.run(cases="queue-small", smoke=True, contenders="mp.Queue",
                         _fault={"kind": "hang"}, timeout=2)
    assert time.monotonic() - t0 < 20
    (row,) = _case(results, "queue-small")["contenders"]
    assert row["status"] == "error"
    assert "timed out after 2 s" in row["error"] and "consumer 0" in row["error"]


def test_crash_is_reported():
    results = bench.run(cases="roundtrip", smoke=True, contenders="mp.Pipe",
                         _fault={"kind": "crash"}, timeout=20)
    (row,) = _case(results, "roundtrip")["contenders"]
    assert row["status"] == "error"
    assert "pong 0 died (exit code 3)" in row["error"], row
    results = bench.run(cases="queue-small", smoke=True, contenders="mp.Queue",
                         _fault={"kind": "crash"}, timeout=20)
    (row,) = _case(results, "queue-small")["contenders"]
    assert row["status"] == "error"
    assert "consumer 0" in row["error"] and "exit code 3" in row["error"], row


def test_stalled_measurement_is_killed_with_its_children(tmp_path, monkeypatch):
    import psutil
    monkeypatch.setattr(runner, "WATCHDOG_GRACE", 1.0)
    pidfile = tmp_path / "pids"
    t0 = time.monotonic()
    results = bench.run(cases="queue-small", smoke=True, contenders="mp.Queue",
                         _fault={"kind": "stall", "pidfile": str(pidfile)}, timeout=1)
    assert time.monotonic() - t0 < 30
    (row,) = _case(results, "queue-small")["contenders"]
    assert row["status"] == "error"
    assert "timed out after 2 s and was killed" in row["error"]
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    for pid in pids:
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        if psutil.pid_exists(pid):
            try:
                assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
            except psutil.NoSuchProcess:
                pass


# --- missing peers and backends ------------------------------------------------------------

def test_missing_peer_is_reported(monkeypatch):
    monkeypatch.setitem(cases_mod.PEERS, "faster-fifo",
                        ("mpx_no_such_module", "faster-fifo", "not installed here"))
    results = bench.run(cases="queue-small", smoke=True, contenders="faster-fifo,mp.Queue")
    rows = {c["name"]: c for c in _case(results, "queue-small")["contenders"]}
    assert rows["faster-fifo"]["status"] == "missing"
    assert "faster-fifo is not installed" in rows["faster-fifo"]["reason"]
    assert rows["mp.Queue"]["status"] == "ok"
    table = bench.format_table(results)
    assert "faster-fifo: missing" in table
    assert "pip install 'mpx[bench]'" in table


def test_missing_pool_peer_is_reported(monkeypatch):
    # loky and mpire come with the bench extra; without them the pool cases
    # still run and say what is missing.
    monkeypatch.setitem(cases_mod.PEERS, "loky",
                        ("mpx_no_such_module", "loky", "not installed here"))
    results = bench.run(cases="executor-map", smoke=True,
                         contenders="loky,mp.ProcessPoolExecutor,mpx.futures.ProcessPoolExecutor")
    rows = {c["name"]: c for c in _case(results, "executor-map")["contenders"]}
    assert rows["loky"]["status"] == "missing"
    assert "loky is not installed" in rows["loky"]["reason"]
    assert rows["mp.ProcessPoolExecutor"]["status"] == "ok"
    assert rows["mpx.futures.ProcessPoolExecutor"]["status"] == "ok"
    assert "loky: missing" in bench.format_table(results)


def test_backend_not_available_is_reported_and_targets_say_so(monkeypatch):
    real = cases_mod.mpx_backends

    def with_imaginary(family):
        return real(family) + [("imaginary", "not built yet in this version of mpx")]
    monkeypatch.setattr(cases_mod, "mpx_backends", with_imaginary)
    monkeypatch.setattr(report, "TARGETS", [
        {"checks": "an imaginary backend", "case": "queue-small", "mpx": "mpx.Queue[imaginary]",
         "peer": "mp.Queue", "at_least": 2.0}])
    results = bench.run(cases="queue-small", smoke=True,
                         contenders="mpx.Queue[imaginary],mp.Queue")
    rows = {c["name"]: c for c in _case(results, "queue-small")["contenders"]}
    assert rows["mpx.Queue[imaginary]"]["status"] == "unavailable"
    assert rows["mpx.Queue[imaginary]"]["reason"] == "not built yet in this version of mpx"
    (target,) = results["targets"]
    assert target["state"] == "not measured"
    assert "not built yet" in target["note"]


# --- targets and ratios, from synthetic figures ----------------------------------------------

def _synthetic(mpx_figure, peer_figure, unit="msg/s", mode="full"):
    higher = cases_mod.UNITS[unit]
    return {
        "mode": mode,
        "cases": [{
            "name": "queue-small", "kind": "stream", "unit": unit,
            "higher_is_better": higher,
            "contenders": [
                {"name": "mpx.Queue[shm]", "side": "mpx", "status": "ok",
                 "median": mpx_figure},
                {"name": "mp.Queue", "side": "peer", "status": "ok", "median": peer_figure},
                {"name": "faster-fifo", "side": "peer", "status": "error", "error": "x"},
            ]}],
    }


@pytest.mark.parametrize("mpx_fig,peer_fig,unit,state", [
    (600.0, 100.0, "msg/s", "met"),          # 6x >= 5x
    (400.0, 100.0, "msg/s", "MISSED"),       # 4x < 5x
    (10.0, 60.0, "us", "met"),               # latency: 6x faster
    (30.0, 60.0, "us", "MISSED"),            # latency: 2x faster
])
def test_targets_are_judged_from_the_run(monkeypatch, mpx_fig, peer_fig, unit, state):
    monkeypatch.setattr(report, "TARGETS", [
        {"checks": "the shm queue", "case": "queue-small", "mpx": "mpx.Queue[shm]",
         "peer": "mp.Queue", "at_least": 5.0},
        {"checks": "the shm queue", "case": "queue-small", "mpx": "mpx.Queue[shm]",
         "peer": "faster-fifo", "at_least": 4.0},
        {"checks": "the shm queue", "case": "roundtrip", "mpx": "mpx.Queue[shm]",
         "peer": "mp.Pipe", "at_least": 8.0}])
    results = _synthetic(mpx_fig, peer_fig, unit)
    report._derive(results)
    first, second, third = results["targets"]
    assert first["state"] == state
    assert first["value"] == pytest.approx(max(mpx_fig, peer_fig) / min(mpx_fig, peer_fig))
    assert second["state"] == "not measured" and "faster-fifo" in second["note"]
    assert third["state"] == "not measured" and third["note"] == "case not in this run"
    row = results["cases"][0]["contenders"][0]
    assert results["cases"][0]["best_peer"] == "mp.Queue"
    assert row["speedup_best"] == pytest.approx(first["value"])


def test_absolute_and_ceiling_targets(monkeypatch):
    monkeypatch.setattr(report, "TARGETS", [
        {"checks": "hand-offs", "case": "sharedarray-*", "mpx": "mpx.SharedArray[*]", "at_most": 1.0},
        {"checks": "the shm queue", "case": "queue-bytes-1MiB", "mpx": "mpx.Queue[shm]",
         "ceiling": "memcpy", "at_least": 0.6}])

    def case(name, kind, unit, rows):
        return {"name": name, "kind": kind, "unit": unit, "size": 1 << 20,
                "higher_is_better": cases_mod.UNITS[unit], "contenders": rows}
    results = {"mode": "quick", "cases": [
        case("sharedarray-1MiB", "handoff", "ms", [
            {"name": "mpx.SharedArray[posix]", "side": "mpx", "status": "ok", "median": 0.3},
            {"name": "mpx.SharedArray[sysv]", "side": "mpx", "status": "ok", "median": 1.5}]),
        case("queue-bytes-1MiB", "stream", "GB/s", [
            {"name": "mpx.Queue[shm]", "side": "mpx", "status": "ok", "median": 7.0}]),
        case("memcpy", "memcpy", "GB/s", [
            {"name": "numpy copy", "side": "ceiling", "status": "ok", "median": 10.0}]),
    ]}
    report._derive(results)
    states = [(t["mpx_run"], t["state"]) for t in results["targets"]]
    assert states == [("mpx.SharedArray[posix]", "met"), ("mpx.SharedArray[sysv]", "MISSED"),
                      ("mpx.Queue[shm]", "met")]
    assert results["targets"][2]["value"] == pytest.approx(0.7)


# --- choosing cases ----------------------------------------------------------------------

def test_case_selection():
    names = lambda cs: [c["name"] for c in cs]     # noqa: E731
    assert names(cases_mod.select("queue-small")) == ["queue-small"]
    assert names(cases_mod.select("queue-small-4")) == ["queue-small-4to1"]
    assert set(names(cases_mod.select("pipe-bytes-*"))) == {
        "pipe-bytes-1KiB", "pipe-bytes-64KiB", "pipe-bytes-1MiB", "pipe-bytes-64MiB"}
    quick = names(cases_mod.select(quick=True))
    assert "memcpy" in quick and "queue-bytes-64MiB" not in quick
    assert "sharedarray-1GiB" not in names(cases_mod.select(smoke=True))
    with pytest.raises(ValueError, match="no benchmark case matches"):
        cases_mod.select("no-such-case")
    with pytest.raises(ValueError, match="no contender matches"):
        bench.run(cases="queue-small", smoke=True, contenders="nobody")


def test_payload_check_catches_damage():
    from mpx.bench.worker import Payloads
    import numpy as np
    for mode in ("bytes", "numpy"):
        p = Payloads(mode, 4096)
        assert [p.check(m) for m in p.items] == [0, 1]
        assert p.check(p.items[0][:-8]) == -1                 # truncated
        broken = bytearray(bytes(p.items[1]))
        broken[8 * int(p.index[5]) + 1] ^= 1
        damaged = bytes(broken) if mode == "bytes" else np.frombuffer(broken, np.float64)
        assert p.check(damaged) == -1
    assert Payloads("numpy", 4096).check(bytes(Payloads("bytes", 4096).items[0])) == -1


# --- the command line ---------------------------------------------------------------------

def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mpx", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_table_json_markdown_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    r = _cli("--smoke", "--cases", "pipe-bytes-1KiB,pipe-bytes-64KiB",
             "--contenders", "mp.Pipe,mpx.Pipe[pipe]", "--json", str(out_json),
             "--plot", str(out_png))
    assert r.returncode == 0, r.stderr
    assert "pipe-bytes-64KiB" in r.stdout and "best peer" in r.stdout
    assert "contenders measured" in r.stderr          # progress, on stderr only
    data = json.loads(out_json.read_text())
    assert {c["name"] for c in data["cases"]} == {"pipe-bytes-1KiB", "pipe-bytes-64KiB"}
    assert data["command"].startswith("python -m mpx bench --smoke")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = _cli("--from-json", str(out_json), "--markdown")
    assert r.returncode == 0, r.stderr
    assert "| case | mpx |" in r.stdout and "Measured on" in r.stdout


def test_cli_reports_errors_in_exit_code():
    r = _cli("--cases", "nothing-like-this")
    assert r.returncode != 0 and "no benchmark case matches" in r.stderr
    r = _cli("--list")
    assert r.returncode == 0 and "queue-small" in r.stdout and "memcpy" in r.stdout
