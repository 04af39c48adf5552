# mpx.util is multiprocessing.util itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.util import *
