"""Compiled mechanism of mpx (built from cython_src/ by setup.py)."""
