# mpx.popen_spawn_posix is multiprocessing.popen_spawn_posix itself (see _StdlibSubmodules in
# mpx/__init__.py), so its types are typeshed's.
from multiprocessing.popen_spawn_posix import *
