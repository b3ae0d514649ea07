"""`python3 -m firstboot.endpoint`: run the token endpoint."""

import sys

from .tokend import main

sys.exit(main())
