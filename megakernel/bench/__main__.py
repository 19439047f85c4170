"""``python -m megakernel.bench``: the decode benchmark (see ``megakernel.bench.decode``)."""

import sys

from megakernel.bench.decode import main

sys.exit(main())
