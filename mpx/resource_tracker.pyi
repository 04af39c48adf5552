# mpx.resource_tracker is multiprocessing.resource_tracker itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.resource_tracker import *
