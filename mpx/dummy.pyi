# mpx.dummy is multiprocessing.dummy itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.dummy import *
