"""The hostile tests import their command helpers from ``hostile_cli.py`` beside them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
