# mpx.popen_forkserver is multiprocessing.popen_forkserver itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.popen_forkserver import *
