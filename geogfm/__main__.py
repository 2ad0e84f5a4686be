"""``python -m geogfm <stage>``: the same as the ``geogfm`` command."""

import sys

from geogfm.cli import main

if __name__ == "__main__":
    sys.exit(main())
