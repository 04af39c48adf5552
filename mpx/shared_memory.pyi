# mpx.shared_memory is multiprocessing.shared_memory itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.shared_memory import *
