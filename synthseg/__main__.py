import sys

from synthseg.cli import main

sys.exit(main())
