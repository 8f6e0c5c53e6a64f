"""Benchmark-suite setup: run on the checkout's jaxfuse and record the device in pytest-benchmark's JSON.

Run: ``python -m pytest benchmarks --benchmark-only`` (plain ``pytest`` runs only
``tests/``, see ``pyproject.toml``). Sizes that do not fit the memory cap
(``$JAXFUSE_BENCH_MEMORY_GB``, default 4, at most half of free memory) are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
