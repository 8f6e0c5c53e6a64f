"""Benchmark-suite setup: run on the checkout's jaxfuse and record the device in pytest-benchmark's JSON.

Run: ``python -m pytest benchmarks --benchmark-only`` (plain ``pytest`` runs only
``tests/``, see ``pyproject.toml``). Sizes that do not fit the memory cap
(``$JAXFUSE_BENCH_MEMORY_GB``, default 4, at most half of free memory) are skipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# A fresh, empty compilation cache per session (before jaxfuse is imported): the
# first-call figures are those of a new machine, not of the user's warm cache.
if "JAXFUSE_COMPILATION_CACHE" not in os.environ:
    _session_cache = tempfile.mkdtemp(prefix="jaxfuse-bench-cache-")
    os.environ["JAXFUSE_COMPILATION_CACHE"] = _session_cache
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)

# Benchmark the checkout, not whichever jaxfuse happens to be installed.
_REPOSITORY = str(Path(__file__).resolve().parent.parent)
if _REPOSITORY not in sys.path:
    sys.path.insert(0, _REPOSITORY)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the JAX device and library versions to the JSON's machine_info."""
    import jax
    import jaxlib
    import numpy as np

    device = jax.devices()[0]
    machine_info["jax_device"] = f"{device.platform}: {device.device_kind}"
    machine_info["jax_device_count"] = len(jax.devices())
    machine_info["versions"] = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__}
