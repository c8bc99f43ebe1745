"""``python -m lrnn.bench SUBCOMMAND [options]``: an alias of ``lrnn bench``; see ``lrnn.bench``."""

import sys

from lrnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
