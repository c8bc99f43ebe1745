import sys

from lrnn.cli import main

sys.exit(main())
