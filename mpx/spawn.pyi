# mpx.spawn is multiprocessing.spawn itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.spawn import *
