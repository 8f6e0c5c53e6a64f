"""The *ragged* section: skewed ragged sizes through ``pack_groups`` (one bucket), ``pack_ragged`` (by size), and
``fuse_ragged`` end to end against numpy ``reduceat`` on the flat members."""

from __future__ import annotations

import numpy as np

import jaxfuse
from jaxfuse._fusion.fuse_ragged import fuse_ragged
from jaxfuse._fusion.packing import pack_groups, pack_ragged, unpack_groups
from jaxfuse.bench.baselines import numpy_closed_form, numpy_ragged_gaussian
from jaxfuse.bench.data import RaggedMembers, skewed_ragged_members
from jaxfuse.bench.section import Section, format_fraction, format_ratio, format_seconds
from jaxfuse.bench.sizes import TEMPERATURE, Sizes
from jaxfuse.bench.timing import time_call


def _pack_by_size(ragged: RaggedMembers) -> list:
    """``pack_ragged``: one padded batch per power-of-two size bucket (``fuse_ragged``'s Laplace and Student-t path)."""
    return list(pack_ragged(ragged.values, ragged.weights, lengths=ragged.lengths).batches)


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
        "`pack_ragged` splits groups by power-of-two size, one batch per bucket (one compile each). *Fuse* is "
        "`fuse_groups` + `unpack_groups` on the packed numpy arrays (numpy in, numpy out); the baseline is "
        "vectorized numpy on the same padded arrays, so the speed-up compares like with like. Packing, which "
        "either would need, is timed apart. *fuse_ragged end to end* (flat members in, per-group results and "
        "per-member probabilities out) is compared with numpy on the flat members, no padding at all "
        "(`numpy_ragged_gaussian`: `np.*.reduceat` weighted moments, float32)."),
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
    end_to_end = time_call(lambda: fuse_ragged(ragged.values, ragged.weights, lengths=lengths, temperature=TEMPERATURE),
                           repeats=sizes.repeats, min_seconds=sizes.min_seconds, max_seconds=sizes.max_seconds)
    flat = time_call(lambda: numpy_ragged_gaussian(ragged.values, ragged.weights, lengths, TEMPERATURE),
                     repeats=sizes.baseline_repeats, min_seconds=min(0.05, sizes.min_seconds),
                     max_seconds=2 * sizes.max_seconds, max_rounds=20)
    speedup = flat.median / end_to_end.median
    section.rows.append(["fuse_ragged end to end", "(segment form)", "", "", format_seconds(end_to_end.median),
                         format_seconds(flat.median) + " (reduceat)", format_ratio(speedup), format_ratio(speedup)])
    section.data["fuse_ragged"] = dict(seconds=end_to_end.median, numpy_reduceat_seconds=flat.median, speedup=speedup)
    return section
