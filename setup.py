"""Build mpx: every cython_src/NAME.pyx becomes the extension mpx._ext.NAME.

A compile failure is an install failure: there is no pure-Python fallback,
because the fast path is the reason mpx exists.
"""
import glob
import os

from setuptools import Extension, find_packages, setup
from Cython.Build import cythonize

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = "cython_src"


def extensions():
    exts = []
    for pyx in sorted(glob.glob(os.path.join(SRC, "*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            "mpx._ext." + stem,
            [pyx],
            include_dirs=[SRC],
            extra_compile_args=["-O2"],
        ))
    return cythonize(
        exts,
        include_path=[SRC],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False,
                             "cdivision": True, "embedsignature": True},
    )


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


setup(
    name="mpx",
    version="0.1.0",
    description="A faster, safer drop-in extension of Python's multiprocessing",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mpx", "mpx.*"]),
    ext_modules=extensions(),
    install_requires=["cloudpickle>=2.0", "posix_ipc>=1.1", "sysv_ipc>=1.1", "numpy>=1.22"],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6", "psutil>=5.9"],
        "bench": ["faster-fifo>=1.4", "pyzmq>=25", "matplotlib>=3.5"],
    },
    entry_points={"console_scripts": ["mpx=mpx.__main__:main"]},
    zip_safe=False,
)
