"""What a figure was measured on: processor, cores, Keras backend and accelerator.

Timings and speeds mean nothing without the machine behind them, so cards, the comparison
table and the benchmark all describe it the same way. TensorFlow is imported only when it is
the Keras backend: the GPU machines run Keras on JAX and have no TensorFlow at all.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import keras

CPUINFO = Path("/proc/cpuinfo")


def processor() -> str:
    """The CPU model and the cores this process may use (`platform.processor()` is empty on
    Linux, hence /proc/cpuinfo)."""
    name = platform.machine()
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                name = value.strip()
                break
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def device() -> str:
    """Backend and the device Keras computes on, as written into model cards."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        first = jax.devices()[0]
        kind = first.device_kind if first.platform != "cpu" else f"cpu ({processor()})"
        return f"{backend}:{kind}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"{backend}:{gpus[0].name}" if gpus else f"{backend}:cpu ({processor()})"
    return backend


def describe() -> str:
    """One line for the docs: operating system, Python, Keras and the device."""
    return (
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"Keras {keras.__version__}, {device()}"
    )
