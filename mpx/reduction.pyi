# mpx.reduction is multiprocessing.reduction itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.reduction import *
