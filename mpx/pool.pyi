# mpx.pool is multiprocessing.pool itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.pool import *
