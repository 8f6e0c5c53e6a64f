"""The *floors* section: copy bandwidth and ``exp`` throughput of the device, which bound every closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfuse.bench.section import Section, format_seconds
from jaxfuse.bench.sizes import Sizes
from jaxfuse.bench.timing import time_call


def measure_floors(sizes: Sizes) -> Section:
    """Copy bandwidth (``x + 0`` under jit: read and write once) and ``exp`` throughput of the device."""
    section = Section("floors", "Floors of this device", (
        "What the hardware allows, measured in the same run: a jitted `x + 0` on a float32 array "
        "(read once, written once; XLA keeps it, as -0.0 + 0 is +0.0) and a jitted `jnp.exp`. A closed-form "
        "fusion must at least read its inputs, write its outputs and take one `exp` per member. Floors, rates "
        "and fractions of floor use best times (the least disturbed call); speed-ups are given for both."),
        ["measurement", "array", "best time", "median time", "rate (best)"])
    # Accelerators need bigger arrays, or the dispatch overhead hides the bandwidth.
    elements = sizes.floor_elements if jax.devices()[0].platform == "cpu" else max(sizes.floor_elements, 1 << 28)
    x = jax.device_put(jnp.linspace(-10.0, 0.0, elements, dtype=jnp.float32))
    copy, exp = jax.jit(lambda a: a + 0), jax.jit(jnp.exp)
    copy_time = time_call(lambda: copy(x), repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                          max_seconds=sizes.max_seconds)
    exp_time = time_call(lambda: exp(x), repeats=sizes.repeats, min_seconds=sizes.min_seconds,
                         max_seconds=sizes.max_seconds)
    copy_gbps = 2 * x.nbytes / copy_time.best / 1e9
    exp_rate = x.size / exp_time.best
    array = f"{x.size:,} float32 ({x.nbytes / 1e6:.0f} MB)"
    section.rows = [
        ["copy bandwidth (read + write)", array, format_seconds(copy_time.best), format_seconds(copy_time.median),
         f"{copy_gbps:.2f} GB/s"],
        ["exp throughput", array, format_seconds(exp_time.best), format_seconds(exp_time.median), f"{exp_rate / 1e9:.3g} G exp/s"],
    ]
    section.data = {"copy_gbps": copy_gbps, "exp_per_second": exp_rate, "elements": int(x.size)}
    return section
