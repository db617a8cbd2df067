import sys

from sibo.cli import main

sys.exit(main())
