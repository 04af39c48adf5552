"""Other libraries' own test suites, with mpx in place of multiprocessing.

    python benchmarks/third_party.py [--only joblib,pebble] [--no-stdlib]
                                     [--cache DIR] [--installed]

Runs joblib's ``test_parallel -k multiprocessing`` and pebble's whole suite
twice: as they are (the stdlib underneath), then with the library's modules
and its test modules importing mpx where they import multiprocessing (the
``mpx_substitute`` pytest plugin beside this file: the one-line change a
user makes, made inside the library). It prints one line per run and exits
1 if a run with mpx had failures or errors.

The libraries are not among mpx's dependencies: unless ``--installed`` (use
what the running Python already has), they are installed with pip into
``--cache`` (default ``~/.cache/mpx-third-party``), which is reused by the
next run. pebble's wheel has no tests, so its sdist (the same version) is
fetched there too. Takes some five minutes on 2 cores (pebble's suite
runs most of it; ``--only joblib`` takes seconds).
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> (pytest arguments, modules that get mpx, modules that keep the stdlib)
SUITES = {
    # loky (vendored in joblib.externals) builds on the stdlib's internals
    # and registers its own start method: it stays as it is. So does
    # joblib.pool, whose pools subclass multiprocessing.pool.Pool and
    # override its private _setup_queues (mpx.pool.Pool refuses such a
    # subclass with a TypeError; see the README's differences).
    "joblib": (["--pyargs", "joblib.test.test_parallel", "-k", "multiprocessing"],
               "joblib", "joblib.externals,joblib.pool"),
    "pebble": (["test"], "pebble,test_", ""),
}
TIMEOUT = 1200


def _pip(*args):
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True,
                   stdout=subprocess.DEVNULL)


def _version(site, name):
    found = glob.glob(os.path.join(site, f"{name}-*.dist-info"))
    if not found:
        raise SystemExit(f"{name} is not installed in {site}")
    return os.path.basename(found[0])[len(name) + 1:-len(".dist-info")]


def prepare(cache, installed, names):
    """(site folder or None, pebble's source folder or None)."""
    site = pebble_version = None
    if not installed:
        site = os.path.join(cache, "site")
        missing = [n for n in names if not os.path.isdir(os.path.join(site, n))]
        if missing:
            print(f"installing {' and '.join(missing)} into {site}", flush=True)
            _pip("install", "--target", site, *missing)
        if "pebble" in names:
            pebble_version = _version(site, "pebble")
    elif "pebble" in names:
        try:
            from importlib.metadata import version
            pebble_version = version("pebble")
        except Exception:
            pebble_version = None
    source = None
    if pebble_version:
        source = os.path.join(cache, f"pebble-{pebble_version}")
        if not os.path.isdir(os.path.join(source, "test")):
            sdist = os.path.join(cache, "sdist")
            print(f"fetching pebble {pebble_version}'s sources (its tests)", flush=True)
            _pip("download", "--no-binary", ":all:", "--no-deps", "-d", sdist,
                 f"pebble=={pebble_version}")
            archive = glob.glob(os.path.join(sdist, f"*ebble-{pebble_version}.tar.gz"))[0]
            with tarfile.open(archive) as t:
                if sys.version_info >= (3, 12):
                    t.extractall(cache, filter="data")
                else:
                    t.extractall(cache)
    return site, source


def run(name, with_mpx, site, pebble_source):
    """Run one suite; (summary line, seconds, ok)."""
    args, substitute, keep = SUITES[name]
    cwd = pebble_source if name == "pebble" else ROOT
    if cwd is None:
        return "pebble's sources are not available", 0.0, False
    path = [ROOT, HERE] + ([site] if site else []) + [os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p),
               MPX_SUBSTITUTE=substitute if with_mpx else "", MPX_SUBSTITUTE_EXCEPT=keep)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "mpx_substitute",
           "-p", "no:cacheprovider", "-W", "ignore", "--rootdir", cwd, *args]
    started = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"ran past {TIMEOUT} s", time.monotonic() - started, False
    seconds = time.monotonic() - started
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines)
                    if re.search(r"\d+ (passed|failed|error)", ln)), "no summary")
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    if failed:
        summary += "\n    " + "\n    ".join(failed)
    return summary, seconds, out.returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="joblib,pebble", help="comma-separated suites")
    ap.add_argument("--no-stdlib", action="store_true",
                    help="skip the runs without mpx (the reference)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/mpx-third-party"))
    ap.add_argument("--installed", action="store_true",
                    help="use the libraries the running Python has")
    opts = ap.parse_args(argv)
    names = [n for n in opts.only.split(",") if n]
    for n in names:
        if n not in SUITES:
            ap.error(f"unknown suite {n!r}; choose from {sorted(SUITES)}")
    os.makedirs(opts.cache, exist_ok=True)
    site, source = prepare(opts.cache, opts.installed, names)
    all_ok = True
    for n in names:
        for with_mpx in ([False] if not opts.no_stdlib else []) + [True]:
            summary, seconds, ok = run(n, with_mpx, site, source)
            print(f"{n:7} {'mpx' if with_mpx else 'stdlib':6} {seconds:6.1f} s  {summary}",
                  flush=True)
            if with_mpx:
                all_ok = all_ok and ok
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
