"""``python -m llm``: the same command line as the ``llm`` console script."""

import sys

from llm.cli import main

if __name__ == "__main__":
    sys.exit(main())
