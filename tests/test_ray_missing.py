"""Without Ray installed (hidden here with ``sys.modules["ray"] = None`` in
a fresh interpreter), the ray backend says why it is unavailable and how to
install it, and the benchmark skips its Ray cases. Runs on every Python,
Ray or not."""

import subprocess
import sys
import textwrap

HIDE = "import sys; sys.modules['ray'] = None\n"


def run(code, **env):
    import os
    out = subprocess.run([sys.executable, "-c", HIDE + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, **env))
    return out


def test_backends_table_says_why_and_how():
    out = run("""
        import mpx
        row = next(r for r in mpx.backends() if r["name"] == "ray")
        print(row["available"], row["families"], row["reason"])
        print(mpx.backends())
    """)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("False () needs Ray, which is not installed")
    assert 'pip install "mpx[ray]"' in first
    assert "unavailable: needs Ray" in out.stdout


def test_asking_for_it_raises_with_the_install_command():
    out = run("""
        import mpx
        for make in (lambda: mpx.Queue(backend="ray"), lambda: mpx.Pool(backend="ray")):
            try:
                make()
            except ValueError as e:
                print(e)
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "backend 'ray' is not available here" in line
        assert 'pip install "mpx[ray]"' in line


def test_mpx_backend_ray_without_ray_fails_loudly_for_queues_only():
    out = run("""
        import mpx
        a, b = mpx.Pipe()           # ray has no Pipe: the default serves
        a.send(1)
        print(b.recv())
        mpx.Queue()
    """, MPX_BACKEND="ray")
    assert out.stdout.strip() == "1"
    assert out.returncode != 0 and 'pip install "mpx[ray]"' in out.stderr


def test_bench_skips_the_ray_cases():
    out = run("""
        from mpx.bench import cases as c
        peers, _ = c.peer_status()
        for case in c.CASES:
            if case["name"].startswith("ray-"):
                for x in c.contenders(case, peers):
                    print(case["name"], x["name"], x["unavailable"])
        print([x["name"] for x in c.contenders(c.CASES[0], peers)])
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    ray_lines = [line for line in lines if line.startswith("ray-")]
    assert len(ray_lines) >= 8
    assert all('ray not installed (pip install "mpx[ray]")' in line for line in ray_lines)
    assert "ray" not in lines[-1]      # the generic cases leave the backend out
