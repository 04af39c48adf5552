# The one place the version is written: pyproject.toml reads it from here
# (setuptools' static attr lookup), and mpx.__version__ re-exports it.
__version__ = "0.2.0.dev0"
