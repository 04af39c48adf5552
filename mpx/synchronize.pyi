# mpx.synchronize is multiprocessing.synchronize itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.synchronize import *
