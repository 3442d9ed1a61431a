"""`python -m minichord ...`: the same commands as `minichord` (the form torchrun launches: `torchrun -m minichord`)."""

import sys

from minichord.cli import main

sys.exit(main())
