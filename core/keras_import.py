"""Importing Keras (and TensorFlow under it) without its start-up chatter on the console.

TensorFlow's C++ libraries print notices while they load (the absl preamble, "oneDNN custom
operations are on", "This TensorFlow binary is optimized to use available CPU
instructions"), before TF_CPP_MIN_LOG_LEVEL or any Python logging applies, straight to file
descriptor 2. An administrator reading the service's log, or a radiologist running
`predict`, should not have to learn to ignore them. So the import runs with descriptor 2
captured, and whatever it printed that is not one of those known notices is passed on: a
real warning or an import error is never hidden.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

CHATTER = re.compile(
    r"absl::InitializeLog\(\)|oneDNN custom operations are on|cpu_feature_guard"
    r"|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler"
)


def import_keras() -> ModuleType:
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if line and not CHATTER.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return keras
