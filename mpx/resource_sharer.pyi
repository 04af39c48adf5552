# mpx.resource_sharer is multiprocessing.resource_sharer itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.resource_sharer import *
