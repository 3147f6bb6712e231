"""``python -m cimexp.report``: see :mod:`cimexp.report.cli`."""

import sys

from cimexp.report.cli import main

sys.exit(main())
