"""The *ragged* section: skewed ragged group sizes through ``pack_groups``, one bucket against buckets by size."""

from __future__ import annotations

import numpy as np

import jaxfuse
from jaxfuse._ragged import pack_groups, unpack_groups
from jaxfuse.bench.baselines import numpy_closed_form
from jaxfuse.bench.data import RaggedMembers, skewed_ragged_members
from jaxfuse.bench.section import Section, format_fraction, format_ratio, format_seconds
from jaxfuse.bench.sizes import TEMPERATURE, Sizes
from jaxfuse.bench.timing import time_call


def _pack_by_size(ragged: RaggedMembers) -> list:
    """Split the groups by power-of-two size and pack each bucket: padding follows each group's own size."""
    # Power-of-two bucket of each group: 2 ** ceil(log2(size)), computed without a Python loop.
    bucket_of = np.left_shift(1, np.ceil(np.log2(np.maximum(ragged.lengths, 1))).astype(np.int64))
    bucket_of_member = np.repeat(bucket_of, ragged.lengths)
    packed = []
    for bucket in np.unique(bucket_of):
        # Members are contiguous in group order, so a bucket's members stay contiguous too.
        members = bucket_of_member == bucket
        packed.append(pack_groups(ragged.values[members], ragged.weights[members],
                                  lengths=ragged.lengths[bucket_of == bucket], members=int(bucket)))
    return packed


def _fuse_packed(packed_list) -> list:
    return [unpack_groups(jaxfuse.fuse_groups(p.values, p.weights, p.mask, template="gaussian",
                                              temperature=TEMPERATURE).location, p) for p in packed_list]


def measure_ragged(sizes: Sizes) -> Section:
    """Skewed ragged sizes: flat members -> pack_groups -> fuse_groups -> per-group numpy results."""
    ragged = skewed_ragged_members(sizes.ragged_groups, sizes.ragged_max_size)
    lengths = ragged.lengths
    section = Section("ragged", f"Skewed ragged groups through pack_groups ({lengths.size:,} groups, "
                      f"{int(lengths.sum()):,} members)", (
        f"Group sizes follow a Zipf law capped at {sizes.ragged_max_size} (median {int(np.median(lengths))}, "
        f"mean {lengths.mean():.1f}, max {int(lengths.max())}). Flat numpy members in, per-group numpy "
        "results out, Gaussian, float32. *One bucket*: `pack_groups` pads every group to the largest; *by size*: "
        "groups are split by power-of-two size and each bucket packed and fused on its own (one compile per "
        "bucket). *Fuse* is `fuse_groups` + `unpack_groups` on the packed numpy arrays (numpy in, numpy out); "
        "the baseline is vectorized numpy on the same padded arrays, so the speed-up compares like with like. "
        "Packing, which either would need, is timed apart."),
        ["packing", "padded slots", "slots used", "pack", "fuse", "numpy baseline", "speed-up (fuse)",
         "speed-up incl. packing"])
    strategies = {
        "one bucket": lambda: [pack_groups(ragged.values, ragged.weights, lengths=lengths)],
        "by size": lambda: _pack_by_size(ragged),
    }
    for name, pack in strategies.items():
        packed_list = pack()
        slots = sum(p.mask.size for p in packed_list)
        _fuse_packed(packed_list)  # compile every bucket outside the timing
        pack_time = time_call(pack, repeats=sizes.repeats, warmup=0, min_seconds=sizes.min_seconds,
                              max_seconds=sizes.max_seconds)
        fuse_time = time_call(lambda: _fuse_packed(packed_list), repeats=sizes.repeats, warmup=0,
                              min_seconds=sizes.min_seconds,
                              max_seconds=sizes.max_seconds)
        baseline = time_call(lambda: [numpy_closed_form("gaussian", p.values, p.weights, p.mask) for p in packed_list],
                             repeats=sizes.baseline_repeats, warmup=0, min_seconds=min(0.05, sizes.min_seconds),
                             max_seconds=2 * sizes.max_seconds, max_rounds=20)
        speedup = baseline.median / fuse_time.median
        with_packing = (baseline.median + pack_time.median) / (fuse_time.median + pack_time.median)
        section.rows.append([name, f"{slots:,}", format_fraction(lengths.sum() / slots), format_seconds(pack_time.median),
                             format_seconds(fuse_time.median), format_seconds(baseline.median), format_ratio(speedup),
                             format_ratio(with_packing)])
        section.data[name] = dict(slots=int(slots), pack_seconds=pack_time.median, fuse_seconds=fuse_time.median,
                                  numpy_seconds=baseline.median, speedup=speedup, speedup_with_packing=with_packing,
                                  buckets=len(packed_list))
    return section
