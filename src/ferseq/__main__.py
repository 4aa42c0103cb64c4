"""``python -m ferseq ...``: the same as the ``ferseq`` command."""

import sys

from ferseq.cli import main

sys.exit(main())
