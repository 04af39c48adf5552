# mpx.heap is multiprocessing.heap itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.heap import *
