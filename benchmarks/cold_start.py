"""First call in a fresh process (no compilation cache) beside the warm call and the published numpy loop.

Run from the repository root, one fresh process per measurement:
``JAX_COMPILATION_CACHE_DIR= python benchmarks/cold_start.py lists`` (400 THUMOS-like items through
``fuse_proposal_lists``, published preset) or ``... detect`` (100 videos x 20 classes x 512 snippets).

Times are CPU-seconds of the process (``time.process_time``) and wall seconds: on a shared, loaded
machine the CPU time is the stable figure. ``JAX_LOG_COMPILES=1`` lists each compiled program.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def best(function, rounds):
    return min(timed(function)[1:] for _ in range(rounds))


def main(what: str) -> None:
    import jax

    import jaxfuse

    if what == "lists":
        from test_bench_proposals import MAX_PROPOSALS, MIN_PROPOSALS, _cas_item

        from jaxfuse._published import published_fusion_loop

        rng = np.random.default_rng(0)
        sizes = np.exp(rng.uniform(np.log(MIN_PROPOSALS), np.log(MAX_PROPOSALS + 1), 400)).astype(int)
        items = [_cas_item(rng, int(n)) for n in sizes]
        segments, scores, weights = (list(x) for x in zip(*items))
        run = lambda: jaxfuse.fuse_proposal_lists(segments, scores, weights, preset="published")  # noqa: E731
        _, first_cpu, first_wall = timed(run)
        warm_cpu, warm_wall = best(run, 5)
        loop_cpu, loop_wall = best(lambda: [published_fusion_loop(s, q, w, temperature=0.2) for s, q, w in items], 2)
        print(f"fuse_proposal_lists, 400 items: first {first_cpu:.2f} CPU-s ({first_wall:.2f} s wall), "
              f"warm {warm_cpu * 1e3:.1f} ms CPU ({warm_wall * 1e3:.1f} ms wall), numpy loop {loop_cpu * 1e3:.0f} ms CPU; "
              f"first / loop {first_cpu / loop_cpu:.1f}x, loop / warm {loop_cpu / warm_cpu:.1f}x (CPU)")
    elif what == "detect":
        videos = jaxfuse.synthetic_videos(num_videos=100, num_classes=20, min_length=256, max_length=512,
                                          confusion=0.5, seed=0)
        cas = np.zeros((100, 512, 20), np.float32)
        cas[:, : videos.cas.shape[1]] = videos.cas
        run = lambda: jax.block_until_ready(  # noqa: E731
            jaxfuse.detect(cas, videos.video_scores, length=videos.length, preset="published"))
        _, first_cpu, first_wall = timed(run)
        warm_cpu, warm_wall = best(run, 5)
        print(f"detect, 100 x 20 x 512: first {first_cpu:.2f} CPU-s ({first_wall:.2f} s wall), "
              f"warm {warm_cpu * 1e3:.1f} ms CPU ({warm_wall * 1e3:.1f} ms wall)")
    else:
        raise SystemExit("usage: cold_start.py lists|detect")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lists")
