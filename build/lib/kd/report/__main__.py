"""`python -m kd.report <sweep dir>`: the same as `kd-report`."""
import sys

from kd.report.cli import main

sys.exit(main())
