"""mpx installs like a real library: from the sdist a package index hands
out, into a fresh virtual environment, with its compiled core.

Slow by nature (one Cython build from scratch, about a minute here), so it
builds once per run and every check reads that one build.
"""

import os
import subprocess
import sys
import tarfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(900)


def _run(cmd, cwd=None, env=None, timeout=600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist path, wheel path, fresh venv's python with the wheel installed)."""
    pytest.importorskip("build", reason="the test extra installs 'build'")
    tmp = tmp_path_factory.mktemp("pkg")
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp / "dist"), ROOT])
    (sdist,) = (tmp / "dist").glob("mpx-*.tar.gz")
    # The wheel is built from the sdist, as pip does when no wheel fits.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir",
          str(tmp / "wheels"), str(sdist)])
    (wheel,) = (tmp / "wheels").glob("mpx-*.whl")
    _run([sys.executable, "-m", "venv", str(tmp / "venv")])
    python = str(tmp / "venv" / "bin" / "python")
    # No compiler on this path: installing a wheel must not need one.
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false")
    env.pop("PYTHONPATH", None)
    _run([python, "-m", "pip", "install", "-q", str(wheel)], env=env)
    return sdist, wheel, python


def test_sdist_carries_what_a_build_needs(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md",
                   "cython_src/ring.pyx", "cython_src/ring.pxd", "cython_src/sync.pyx",
                   "cython_src/sync.pxd", "cython_src/compact.pxi", "cython_src/compact.pyx",
                   "mpx/py.typed",
                   "mpx/__init__.py", "tests/conftest.py", "tests/test_queue_contract.py"):
        assert needed in names, f"the sdist lacks {needed}"
    built_files = [n for n in names if n.endswith((".so", ".c", ".pyc"))]
    assert not built_files, f"the sdist carries build products: {built_files}"


def test_wheel_holds_the_compiled_core(built):
    import zipfile
    _, wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    for stem in ("ring", "sync", "compact"):
        assert any(n.startswith(f"mpx/_ext/{stem}.") and n.endswith(".so") for n in names), \
            f"the wheel lacks mpx._ext.{stem}: {sorted(names)}"
    assert "mpx/py.typed" in names


def test_fresh_install_defaults_to_the_shm_ring_without_numpy(built):
    _, _, python = built
    script = textwrap.dedent("""
        import importlib.util, mpx
        assert importlib.util.find_spec("numpy") is None, "numpy came in as a dependency"
        q = mpx.Queue()
        assert type(q).__module__ == "mpx.backends.shm.queues", type(q)
        q.put((1, "two", 3.0)); assert q.get(timeout=5) == (1, "two", 3.0)
        q.close()
        rows = {r["name"]: r for r in mpx.backends()}
        assert rows["shm"]["available"], rows["shm"]
        try:
            mpx.SharedArray
        except ImportError as e:
            assert "mpx[numpy]" in str(e), e
        else:
            raise AssertionError("SharedArray without numpy did not say what to install")
        print("ok", mpx.__version__)
    """)
    out = _run([python, "-c", script], cwd="/")
    assert out.stdout.startswith("ok ")


def test_a_tree_without_cython_sources_fails_to_build(tmp_path):
    import shutil
    tree = tmp_path / "mpx-src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.so", "*.pyx", "*.egg-info", "__pycache__"))
    out = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tree,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "lacks ring.pyx" in out.stderr and "incomplete" in out.stderr, out.stderr
