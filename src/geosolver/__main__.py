import sys

from geosolver.cli import main

sys.exit(main())
