# mpx.process is multiprocessing.process itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.process import *
