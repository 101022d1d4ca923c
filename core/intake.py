"""From a file on disk to a model input, or a reason why the model must not read it.

Shared by the worker (stored instances) and `predict` (files given by hand), so both apply
the same selection and conversion. Everything a hostile or broken file can cause ends here
as a ConversionError whose message a radiologist can read; nothing else escapes but
MemoryError, which the worker treats as a passing fault and retries.
"""

from __future__ import annotations

from pathlib import Path

from core.config import SelectionConfig
from core.pixels import Converted, convert_file
from core.selection import rejection_reason


def read_model_input(path: Path, selection: SelectionConfig, size: int) -> Converted:
    """Raise ConversionError with a readable reason for anything the model must not read."""
    return convert_file(path, size, lambda dataset: rejection_reason(dataset, selection))
