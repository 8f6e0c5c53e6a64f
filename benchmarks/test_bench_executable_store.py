"""Is the executable store worth its risk? First call in a fresh process with a warm cache, store on against off.

Run: ``python -m pytest benchmarks/test_bench_executable_store.py -s``

``fuse_proposal_lists`` on the 400-item THUMOS-like set (the cold-start
harness, :func:`jaxfuse.bench.cold_start.run_child`), in two caches: one with
jaxfuse's executable store, one with ``JAXFUSE_EXECUTABLE_STORE_MAX_BYTES=0``
(JAX's cache alone, which serves compiled code but leaves tracing and lowering
to every process). Each cache is warmed by one process, then the two are
timed in alternating rounds, so that the machine's load falls on both alike.
The decision this informs is recorded in :mod:`jaxfuse._runtime.executable_store`.
"""

from __future__ import annotations

import statistics

import _data

from jaxfuse.bench.cold_start import run_child
from jaxfuse.bench.sizes import QUICK

ROUNDS = 4


def test_bench_executable_store_on_against_off(benchmark, tmp_path, monkeypatch):
    options = {"workload": "fuse_proposal_lists", "preset": QUICK.name, "overrides": {}}
    caps = {"on": "", "off": "0"}

    def first_calls() -> dict[str, list[float]]:
        for mode, cap in caps.items():  # warm each cache: the empty-cache process stores what it compiles
            monkeypatch.setenv("JAXFUSE_EXECUTABLE_STORE_MAX_BYTES", cap)
            run_child(options, tmp_path / mode)
        seconds: dict[str, list[float]] = {mode: [] for mode in caps}
        for round_ in range(ROUNDS):
            for mode in (("on", "off") if round_ % 2 == 0 else ("off", "on")):
                monkeypatch.setenv("JAXFUSE_EXECUTABLE_STORE_MAX_BYTES", caps[mode])
                seconds[mode].append(run_child(options, tmp_path / mode)["first_seconds"])
        return seconds

    seconds = benchmark.pedantic(first_calls, rounds=1, iterations=1)
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    store_bytes = sum(p.stat().st_size for p in (tmp_path / "on" / "jaxfuse-executables").glob("*.bin"))
    _data.record(benchmark, seconds=seconds, medians=medians, store_bytes=store_bytes,
                 ratio_off_over_on=medians["off"] / medians["on"])
    print(f"\nfirst call, warm cache: store on {medians['on']:.3f} s, off {medians['off']:.3f} s "
          f"({medians['off'] / medians['on']:.1f}x); store {store_bytes / 1e6:.1f} MB; rounds {seconds}")
