# mpx.forkserver is multiprocessing.forkserver itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.forkserver import *
