import sys

from pneumotriage.cli import main

sys.exit(main())
