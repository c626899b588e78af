import sys

from synthseg.allocator import reexec_with_fast_allocator
from synthseg.cli import main

reexec_with_fast_allocator()  # before any work: see synthseg.allocator
sys.exit(main())
