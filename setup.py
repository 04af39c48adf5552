"""Build mpx's compiled core: every cython_src/NAME.pyx becomes mpx._ext.NAME.

The project's metadata lives in pyproject.toml; this file only says how to
compile. A compile failure is an install failure, and so is a source tree
with nothing to compile (an sdist that lost its Cython sources): there is no
pure-Python fallback, because the fast path is the reason mpx exists.
"""
import glob
import os
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = "cython_src"
# The modules mpx cannot work without; a tree missing one is incomplete.
REQUIRED = ("ring", "sync", "compact")


def extensions():
    found = sorted(glob.glob(os.path.join(HERE, SRC, "*.pyx")))
    stems = [os.path.splitext(os.path.basename(p))[0] for p in found]
    missing = [s for s in REQUIRED if s not in stems]
    if missing:
        sys.exit(f"mpx: cannot build: {SRC}/ lacks "
                 + ", ".join(f"{s}.pyx" for s in missing)
                 + f" (looked in {os.path.join(HERE, SRC)}). The Cython sources are part "
                 "of every sdist and checkout of mpx; this one is incomplete.")
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.exit("mpx: cannot build: Cython 3 is needed (pip install 'Cython>=3.0'; "
                 "pip does this by itself unless build isolation is turned off)")
    exts = [Extension("mpx._ext." + stem, [os.path.join(SRC, stem + ".pyx")],
                      include_dirs=[SRC], extra_compile_args=["-O2"])
            for stem in stems]
    return cythonize(
        exts,
        include_path=[SRC],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "embedsignature": True},
    )


setup(ext_modules=extensions())
