"""``python -m epir``."""
import sys

from epir.cli import main

sys.exit(main())
