"""The machine being measured: its name (the report's file name), versions, cores and memory budget."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np

import jaxfuse
from jaxfuse.bench.sizes import COORDINATES, NUMPY_CHUNK_SLOTS


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$|\d+-core", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_name() -> str:
    """``<gpu name>`` on an accelerator, ``cpu-<cpu model>-<n>cores`` on CPU: the report's file name."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{_slug(_cpu_model())}-{cpu_count()}cores"
    count = len(jax.devices())
    return _slug(device.device_kind) + (f"-x{count}" if count > 1 else "")


def machine_info() -> dict[str, Any]:
    """Device, host and versions, for the report's header."""
    import jaxlib

    device = jax.devices()[0]
    info = {
        "machine": machine_name(),
        "device": f"{device.platform}: {device.device_kind}",
        "devices": len(jax.devices()),
        "host_cpu": _cpu_model(),
        "host_cores": cpu_count(),
        "python": platform.python_version(),
        "jaxfuse": jaxfuse.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "source": _source_revision(),
    }
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:
        info["scipy"] = "not installed"
    return info


def _source_revision() -> str:
    """The git commit of the jaxfuse being measured, and whether its library files had local changes."""
    package = Path(jaxfuse.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=package,
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes in jaxfuse/" if changed else "")


def available_memory_bytes() -> int:
    """Memory available to a new allocation: MemAvailable on Linux, else a cautious 4 GB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def memory_budget_bytes(memory_gb: float) -> int:
    """The most one measurement may use: ``memory_gb``, and at most half of what is available."""
    return int(min(memory_gb * 1e9, available_memory_bytes() / 2))


def closed_form_footprint(groups: int, members: int, coordinates: int = COORDINATES) -> int:
    """Estimated peak bytes of a closed-form measurement (inputs, device copies, outputs, numpy chunks)."""
    inputs = groups * members * (4 * coordinates + 4 + 1)
    outputs = groups * (members * 4 + 3 * coordinates * 4 + 8)
    numpy_chunk = min(groups * members, NUMPY_CHUNK_SLOTS) * coordinates * 8 * 6
    return 3 * inputs + 2 * outputs + numpy_chunk
