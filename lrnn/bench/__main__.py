"""``python -m lrnn.bench SUBCOMMAND [options]``; see ``lrnn.bench`` for the subcommands."""

import sys

from lrnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
