"""``jaxfuse demo``: fuse a built-in THUMOS-like set of groups with every template, checked against numpy."""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxfuse._core.result_codes import ResultCode
from jaxfuse._fusion.fuse_groups import compile_count, fuse_groups
from jaxfuse._fusion.templates import TEMPLATES
from jaxfuse.tools.synthetic import numpy_fuse, thumos_like_groups


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", type=int, default=20_000, help="number of groups (default 20000)")
    parser.add_argument("--members", type=int, default=32, help="padded group size (default 32)")
    parser.add_argument("--temperature", type=float, default=0.2, help="softmax temperature (default 0.2, the evaluation value)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic groups (default 0)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per template, median reported (default 5)")


class _CacheHits:
    """Programs JAX loaded from its persistent compilation cache in this process (a listener registered once)."""

    count = 0
    _registered = False

    @classmethod
    def total(cls) -> int:
        if not cls._registered:
            jax.monitoring.register_event_listener(cls._listen)
            cls._registered = True
        return cls.count

    @classmethod
    def _listen(cls, event: str, **_) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            cls.count += 1


def _executables_line(built: int, loaded: int) -> str:
    """What the first calls cost: programs compiled here, or loaded from the disk cache a previous run filled."""
    compiled = built - loaded
    parts = [f"{compiled} compiled"] * bool(compiled) + [f"{loaded} loaded from the compilation cache"] * bool(loaded)
    return f"executables: {built} (one per template for this shape and dtype): {', '.join(parts) or 'none new'}"


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(args: argparse.Namespace) -> int:
    data = thumos_like_groups(args.groups, args.members, seed=args.seed)
    real = int(data.mask.sum())
    device = jax.devices()[0]
    print(f"jaxfuse demo: {args.groups} THUMOS-like groups, {real} members (padded to M = {args.members}), "
          f"K = 3 (start, end, score), T = {args.temperature}, float32, on {device.platform}: {device.device_kind}")
    header = f"{'template':<18} {'max |diff| / spread':>20} {'failed groups':>14} {'jaxfuse ms':>11} {'numpy ms':>9} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    spread = np.ptp(data.values[data.mask], axis=0)
    all_agree = True
    built = loaded = 0
    for template in TEMPLATES:
        # The numpy Student-t baseline iterates EM to convergence: slow, so it gets a subset.
        subset = slice(0, min(args.groups, 2000) if template == "student_t" else args.groups)
        values, weights, mask = data.values[subset], data.weights[subset], data.mask[subset]

        def fuse():
            return jax.block_until_ready(fuse_groups(values, weights, mask, template=template, temperature=args.temperature))

        def reference():
            return numpy_fuse(template, values, weights, mask, args.temperature)

        programs, hits = compile_count(), _CacheHits.total()
        fused = fuse()  # compile (or load) outside the timing
        new = compile_count() - programs
        built, loaded = built + new, loaded + min(new, _CacheHits.total() - hits)
        difference = float(np.max(np.abs(fused.location - reference()) / spread))
        failed = int(np.sum(fused.result != ResultCode.SUCCESSFUL))
        jax_seconds = _median_seconds(fuse, args.repeats)
        numpy_seconds = _median_seconds(reference, 1 if template == "student_t" else max(1, args.repeats // 2))
        agrees = difference < 1e-4 and failed == 0
        all_agree &= agrees
        label = template if subset.stop == args.groups else f"{template} ({subset.stop})"
        print(f"{label:<18} {difference:>20.2e} {failed:>14d} {jax_seconds * 1e3:>11.2f} {numpy_seconds * 1e3:>9.2f} "
              f"{numpy_seconds / jax_seconds:>8.1f}x{'' if agrees else '  MISMATCH'}")
    print(_executables_line(built, loaded))
    print("numpy: vectorized float64 formulas on the same padded arrays; Student-t by EM iterations (first 2000 groups).")
    return 0 if all_agree else 1
