"""``python -m bulkmail_kernel.cli``: the same as the ``bulkmail`` command."""

import sys

from bulkmail_kernel.cli import main

sys.exit(main())
