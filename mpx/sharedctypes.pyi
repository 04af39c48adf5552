# mpx.sharedctypes is multiprocessing.sharedctypes itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.sharedctypes import *
