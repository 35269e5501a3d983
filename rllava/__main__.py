import sys

from rllava.cli import main

sys.exit(main())
