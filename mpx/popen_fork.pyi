# mpx.popen_fork is multiprocessing.popen_fork itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.popen_fork import *
