"""TensorFlow format tests: TensorFlow's logging off before it is imported; the fixture folders."""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "fixtures"
if str(ROOT) not in sys.path:       # the fixture modules define the custom classes the oracle loads
    sys.path.insert(0, str(ROOT))
