"""The greedy grouping rule in a few parallel rounds, exactly: leaders by fixed point over 1-D overlap tiles.

The published rule (:mod:`jaxfuse._proposals.grouping`) takes proposals best first (by
score, equal scores by input index): the best remaining one leads and absorbs
every remaining one that overlaps it above the threshold. Run literally it is
one leader per step, as many sequential steps as groups. Here it is computed
in *rounds* whose number is set by the longest suppression chain, not by the
number of groups.

The rule as a fixed point. Put an item's proposals in that order (their
*rank*) and let ``S[j, i]`` say that leader ``j`` would absorb candidate ``i``
(the rule's own overlap, strictly above the threshold) for ``j`` ranked before
``i``. A proposal leads exactly when no leader before it absorbs it, so the
leader flags satisfy ``leader[i] = valid[i] and not any_j(leader[j] and S[j,
i])``. Start with every valid proposal a leader and apply that update to all
of them at once, round after round, until nothing changes (Cluster-NMS, Zheng
et al., "Enhancing Geometric Factors in Model Learning and Inference for
Object Detection and Instance Segmentation", 2021). After round ``k`` the
``k`` best-ranked flags are final (induction: flag ``i`` depends only on the
flags before it, final one round earlier), so the iteration stops at the
greedy set; more precisely, a flag is final one round after every flag it
depends on, so the rounds needed are one more than the longest chain
``j1 -> j2 -> ...`` of ``S`` edges (the last round confirms). Each other proposal
then belongs to the first leader (lowest rank) that absorbs it: the loop's
leaders come in rank order, and a proposal is absorbed by the first one that
reaches it while it is still unassigned. Groups are numbered in rank order of
their leaders, as the loop numbers them.

Measured rounds (including the confirming round; numpy, this repository's
data): 400 THUMOS-like items (:func:`jaxfuse.bench.data.thumos_like_proposal_items`,
published rule) median 4, 90th percentile 6, at most 9; ActionFormer-like
classes of 2,000 candidates (:func:`jaxfuse.bench.data.actionformer_like_candidates`,
IoU, continuous) at thresholds 0.1 / 0.3 / 0.5 / 0.7: median 6 / 7 / 7 / 7,
at most 9 / 10 / 11 / 12.

Only overlapping pairs matter, and intervals are 1-D. Both measures need a
positive intersection when the threshold is not negative, so in each row the
proposals are also sorted by start and cut into tiles of ``T <= 32``
consecutive ones; within a tile, slots are in rank order. Tile ``B`` can only
interact with an earlier tile ``A`` when ``B``'s first start is within reach
of ``A``'s largest end, so each tile pairs with a contiguous run of following
tiles; the pairs of the whole batch form one flat list (about 1.9 per tile on
THUMOS-like items with ``T = 32``, 6.4 on ActionFormer-like classes). For each
pair, ``S`` in both directions is packed into one 32-bit word per candidate
(bit ``31 - j`` for the ``j``-th source slot), computed once with
:func:`jaxfuse._proposals.grouping.segment_overlap` itself, so threshold decisions are
the loop's bit for bit. A round is then a few bit operations per pair and one
scatter-max into the candidates' tiles; the first leader of a non-leader is
the highest set bit (``clz``) of its masked word. An item of ``N`` proposals
costs two sorts (``O(N log N)``) plus ``O(T^2)`` per tile pair once and
``O(T)`` per pair and round, so a long video with many disjoint proposals is
near ``O(N log N + overlapping pairs)``; no ``N x N`` matrix is formed.

Memory per call: the pair slots dominate, ``PAIRS_PER_TILE`` (12) per tile
of 32 proposals (at least ``MIN_PAIRS``, never more than the dense count,
within ``PAIR_BYTES`` = 256 MB of words), each 2 x 32 words plus indices, and
the rounds' scatter of hits; in all, by XLA's own count (``memory_analysis``,
CPU), about 230 bytes of temporaries per padded proposal, against 24 for the
loop: one item of 100,000 proposals 23 MB (3,125 tiles, 37,888 pair slots),
145 x 1,024 34 MB, 94 x 4,096 87 MB. While words are computed, ``[C, 2, T,
T]`` comparisons are formed per step (``C`` = 512 pairs on CPU, 65,536 on an
accelerator, fused by XLA into the packing); no ``N x N`` array is formed.

Exactness when the structure does not fit: a row whose pairs do not all fit
in the pair slots (the slots are shared by the batch, in row order), or that
is still changing after ``max_rounds`` rounds (an adversarial suppression
chain), is finished by the caller's sequential kernel, a few rows at a time
(:func:`finish_rows`), so the result is always the greedy one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxfuse._core.rows import gather_rows, running_count
from jaxfuse._proposals.grouping import ProposalGroups, group_batch, segment_overlap

WORD_BITS = 32
DEFAULT_MAX_ROUNDS = 24
PAIRS_PER_TILE = 12
MIN_PAIRS = 4096
PAIR_BYTES = 256 << 20
# Pairs whose words are computed in one step of a while loop: on CPU a few
# hundred keep the [C, T, T] work in cache; on an accelerator every step costs
# a launch and a host round trip, so the typical batch is one step.
CHUNK_PAIRS = 512
ACCELERATOR_CHUNK_PAIRS = 1 << 16
FALLBACK_ROWS = 8
# Tile reach by comparing every pair of tiles' bounds up to this many comparisons, else by binary search.
REACH_BY_COMPARISON = 1 << 24

_UNSET = jnp.iinfo(jnp.int32).max


class TilePlan(NamedTuple):
    """Static sizes of one parallel grouping program.

    Attributes:
        tile: proposals per tile (at most 32: one bit each in a uint32 word).
        tiles: tiles per row.
        pairs: pair slots shared by the whole batch (a multiple of ``chunk``).
        chunk: pairs whose words are computed together.
        max_rounds: rounds before unconverged rows go to the sequential finish.
    """

    tile: int
    tiles: int
    pairs: int
    chunk: int
    max_rounds: int


def tile_plan(items: int, size: int, *, max_rounds: int = DEFAULT_MAX_ROUNDS, pairs_per_tile: int = PAIRS_PER_TILE,
              min_pairs: int = MIN_PAIRS, pair_bytes: int = PAIR_BYTES) -> TilePlan:
    """The tile size and pair slots for a batch of ``items`` rows of ``size`` proposals (static).

    Pair slots: ``pairs_per_tile`` per tile, at least ``min_pairs``, at most
    the dense count (every tile with every later one) and ``pair_bytes`` of words.
    """
    tile = min(WORD_BITS, 1 << max(0, (size - 1).bit_length()))
    tiles = -(-size // tile)
    dense = items * tiles * (tiles + 1) // 2
    pairs = max(1, min(dense, max(pairs_per_tile * items * tiles, min_pairs), pair_bytes // (8 * tile + 16)))
    chunk = min(pairs, CHUNK_PAIRS if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK_PAIRS)
    return TilePlan(tile, tiles, -(-pairs // chunk) * chunk, chunk, max(1, int(max_rounds)))


class Tiles(NamedTuple):
    """Each row's proposals by start, cut into tiles: ``[B * tiles, T]`` flat, rank order within a tile."""

    starts: jax.Array
    ends: jax.Array
    rank: jax.Array  # int32 rank of the proposal in its row; >= the row's candidate count in empty slots
    valid: jax.Array


class Leaders(NamedTuple):
    """What :func:`greedy_leaders` finds, in rank space ``[B, N]`` (position ``r`` = the ``r``-th best).

    Attributes:
        order: input index of the proposal at each rank.
        lead: rank of the leader of the group of each rank (its own for a
            leader); -1 for ranks that are not candidates.
        finished: ``[B]`` rows whose result is exact (the others need the
            sequential finish).
        rounds: int32 scalar, rounds run (the last one confirms).
        pairs: int32 scalar, tile pairs the batch needed (may exceed the slots).
    """

    order: jax.Array
    lead: jax.Array
    finished: jax.Array
    rounds: jax.Array
    pairs: jax.Array


def _rank_order(priority, valid):
    """Input index at each rank (best first, equal priorities by index) and which ranks are candidates."""
    items, size = priority.shape
    # The sort's comparator treats -0.0 and 0.0 as equal, as the loop's ``==`` does.
    key = jnp.where(valid, -priority, jnp.inf)
    iota = lax.broadcasted_iota(jnp.int32, (items, size), 1)
    _, order = lax.sort((key, iota), dimension=1, num_keys=1, is_stable=True)
    return order, gather_rows(valid, order)


def _tiles(starts, ends, candidate, plan: TilePlan) -> Tiles:
    """Ranked proposals sorted by start and cut into tiles, each tile's slots re-sorted by rank."""
    items, size = candidate.shape
    width = plan.tile * plan.tiles
    pad = lambda x, value: jnp.pad(x, ((0, 0), (0, width - size)), constant_values=value)
    starts, ends, candidate = pad(starts, 0), pad(ends, 0), pad(candidate, False)
    iota = lax.broadcasted_iota(jnp.int32, (items, width), 1)
    _, by_start = lax.sort((jnp.where(candidate, starts, jnp.inf), iota), dimension=1, num_keys=1, is_stable=False)
    # Non-candidates hold the highest ranks, so they stay last within their tile.
    rank = lax.sort(by_start.reshape(items * plan.tiles, plan.tile), dimension=1).reshape(items, width)
    flat = lambda x: gather_rows(x, rank).reshape(items * plan.tiles, plan.tile)
    return Tiles(flat(starts), flat(ends), rank.reshape(items * plan.tiles, plan.tile), flat(candidate))


def _tile_reach(tiles: Tiles, items: int, reach_offset, disjoint_related, plan: TilePlan):
    """``[B * tiles]`` int32: how many tiles, from each one on, may hold proposals overlapping it."""
    shape = (items, plan.tiles)
    any_valid = tiles.valid[:, 0].reshape(shape)  # candidates come first in a tile
    first_start = jnp.where(tiles.valid, tiles.starts, jnp.inf).min(axis=1).reshape(shape)
    last_end = jnp.where(tiles.valid, tiles.ends, -jnp.inf).max(axis=1).reshape(shape)
    # A later start s can only overlap an end e when s - e < offset (the float
    # intersection is then not positive); nextafter keeps the rounded bound safe.
    bound = jnp.nextafter(last_end + reach_offset, jnp.asarray(jnp.inf, last_end.dtype))
    bound = jnp.where(disjoint_related, jnp.inf, bound)
    # Tiles' first starts increase along the row (empty tiles, +inf, come last). Comparing with
    # every tile is one fused step where that is small; a binary search is a while loop (on a
    # GPU, a host round trip per step).
    if items * plan.tiles * plan.tiles <= REACH_BY_COMPARISON:
        last = jnp.sum(first_start[:, None, :] <= bound[:, :, None], axis=2, dtype=jnp.int32) - 1
    else:
        last = jax.vmap(lambda row, queries: jnp.searchsorted(row, queries, side="right"))(first_start, bound) - 1
    last = jnp.minimum(last, jnp.sum(any_valid, axis=1, keepdims=True, dtype=jnp.int32) - 1)
    own = jnp.arange(plan.tiles, dtype=jnp.int32)
    # A tile always pairs with itself (a NaN bound from garbage input compares false everywhere).
    return jnp.where(any_valid, jnp.maximum(last, own) - own + 1, 0).reshape(-1).astype(jnp.int32)


def _pack(flags, axis):
    """Flags along ``axis`` (slot ``j``) as bit ``31 - j`` of a uint32 word."""
    size = flags.shape[axis]
    shape = [1] * flags.ndim
    shape[axis] = size
    bits = (jnp.uint32(1) << (WORD_BITS - 1 - jnp.arange(size, dtype=jnp.uint32))).reshape(shape)
    return jnp.sum(jnp.where(flags, bits, jnp.uint32(0)), axis=axis, dtype=jnp.uint32)


def _pair_tiles(count, plan: TilePlan):
    """Each pair slot's two tiles ``(first, second)``, the pairs needed and each tile's running end (no search).

    Tile ``t`` owns slots ``[ends[t] - count[t], ends[t])``: the slot where a
    tile's run starts is marked, a running count of the marks is the owner's
    ordinal among tiles with pairs, and the owners themselves are those tiles
    in order.
    """
    slots = count.shape[0]
    exact = slots * plan.tiles < 1 << 24  # running_count's float32 sums are exact below 2**24
    ends = running_count(count) if exact else jnp.cumsum(count, dtype=jnp.int32)
    has_pairs = count > 0
    begin = ends - count
    marked = jnp.where(has_pairs & (begin < plan.pairs), begin, plan.pairs)  # distinct slots, or the spare one
    marks = jnp.zeros((plan.pairs + 1,), jnp.int32).at[marked].add(1, mode="promise_in_bounds")
    ordinal = running_count(marks[: plan.pairs]) - 1
    owners = jnp.zeros((slots,), jnp.int32).at[jnp.where(has_pairs, running_count(has_pairs) - 1, slots)].set(
        jnp.arange(slots, dtype=jnp.int32), mode="drop")
    first = owners[jnp.clip(ordinal, 0, slots - 1)]
    k = jnp.arange(plan.pairs, dtype=jnp.int32)
    real = k < jnp.minimum(ends[-1], plan.pairs)
    second = jnp.where(real, first + k - begin[first], first)
    return first, second, real, ends


def _pair_words(tiles: Tiles, first, second, real, related):
    """``[C, 2, T]`` words of pairs ``(first, second)``: direction 0 has the first tile's slots absorb the
    second's, direction 1 the reverse; bit ``31 - j`` of word ``i`` says source slot ``j`` absorbs target slot ``i``.
    """
    source = jnp.stack([first, second], axis=1)
    target = jnp.stack([second, first], axis=1)
    s_start, s_end, s_rank, s_valid = (x[source][..., :, None] for x in tiles)
    t_start, t_end, t_rank, t_valid = (x[target][..., None, :] for x in tiles)
    absorbs = related(s_start, s_end, t_start, t_end) & (s_rank < t_rank) & s_valid & t_valid
    return _pack(absorbs & real[:, None, None, None], axis=2)


def _pair_words_all(tiles: Tiles, count, related, plan: TilePlan):
    """Every pair's words in both directions, chunk by chunk (only the chunks holding pairs are computed)."""
    first, second, real, ends = _pair_tiles(count, plan)
    zero = jnp.int32(0)

    def body(state):
        chunk, words = state
        start = chunk * plan.chunk
        take = lambda x: lax.dynamic_slice_in_dim(x, start, plan.chunk)
        chunk_words = _pair_words(tiles, take(first), take(second), take(real), related)
        return chunk + 1, lax.dynamic_update_slice(words, chunk_words, (start, zero, zero))

    used = jnp.minimum(ends[-1], plan.pairs)
    chunks = (used + plan.chunk - 1) // plan.chunk
    state = (jnp.int32(0), jnp.zeros((plan.pairs, 2, plan.tile), jnp.uint32))
    _, words = lax.while_loop(lambda s: s[0] < chunks, body, state)
    return first, second, words, ends[-1], ends


def _suppressed(words, first, second, bits, slots):
    """``[slots, T]`` bool: candidates absorbed by some current leader (one scatter-max over both directions)."""
    hit_second = (words[:, 0, :] & bits[first][:, None]) != 0
    hit_first = (words[:, 1, :] & bits[second][:, None]) != 0
    target = jnp.concatenate([second, first])
    # Bytes on CPU; GPUs have native atomics for 32-bit integers only.
    flag = jnp.int8 if jax.default_backend() == "cpu" else jnp.int32
    hits = jnp.concatenate([hit_second, hit_first]).astype(flag)
    return jnp.zeros((slots, words.shape[2]), flag).at[target].max(hits, mode="promise_in_bounds") > 0


def _rounds(tiles: Tiles, words, first, second, active, items: int, plan: TilePlan):
    """The fixed point on leader bits; returns the final bits, the rows still changing and the rounds run."""
    slots = tiles.valid.shape[0]

    def body(state):
        bits, _, rounds = state
        leader = tiles.valid & ~_suppressed(words, first, second, bits, slots)
        new_bits = _pack(leader, axis=1)
        changing = jnp.any((new_bits != bits).reshape(items, plan.tiles), axis=1) & active
        return new_bits, changing, rounds + 1

    state = (_pack(tiles.valid, axis=1), active, jnp.int32(0))
    bits, changing, rounds = lax.while_loop(
        lambda s: jnp.any(s[1]) & (s[2] < plan.max_rounds), body, state
    )
    return bits, changing, rounds


def _first_leaders(tiles: Tiles, words, first, second, bits):
    """``[slots, T]`` rank of each slot's group leader: its own for a leader, else the best absorbing leader."""
    slots, tile = tiles.valid.shape

    def best(word, source):
        masked = word & bits[source][:, None]
        slot = jnp.minimum(lax.clz(masked), tile - 1).astype(jnp.int32)  # highest bit = best-ranked source slot
        return jnp.where(masked != 0, jnp.take_along_axis(tiles.rank[source], slot, axis=1), _UNSET)

    target = jnp.concatenate([second, first])
    found = jnp.concatenate([best(words[:, 0, :], first), best(words[:, 1, :], second)])
    absorbed_by = jnp.full((slots, tile), _UNSET, jnp.int32).at[target].min(found, mode="promise_in_bounds")
    shift = WORD_BITS - 1 - jnp.arange(tile, dtype=jnp.uint32)
    is_leader = tiles.valid & (((bits[:, None] >> shift) & 1) != 0)
    return jnp.where(is_leader, tiles.rank, jnp.where(tiles.valid, absorbed_by, -1))


def greedy_leaders(starts, ends, priority, valid, related: Callable, reach_offset, disjoint_related,
                   plan: TilePlan) -> Leaders:
    """The greedy rule's leaders and groups by parallel rounds (traceable; see the module docstring).

    Args:
        starts: ``[B, N]`` floats.
        ends: ``[B, N]``.
        priority: ``[B, N]`` processing order, highest first, equal values by
            lower index; finite where valid.
        valid: ``[B, N]`` bool, the proposals that take part.
        related: ``(leader_start, leader_end, starts, ends) -> bool`` (broadcasting),
            whether a leader absorbs (suppresses) a candidate.
        reach_offset: scalar: ``related`` needs ``min(ends) - max(starts) +
            reach_offset > 0`` (in floating point) unless ``disjoint_related``.
        disjoint_related: bool scalar: ``related`` may hold for disjoint
            segments (e.g. a negative threshold); then every tile pair is formed.
        plan: static sizes, from :func:`tile_plan`.

    Returns:
        :class:`Leaders`.
    """
    items, size = priority.shape
    order, candidate = _rank_order(priority, valid)
    tiles = _tiles(gather_rows(starts, order), gather_rows(ends, order), candidate, plan)
    count = _tile_reach(tiles, items, reach_offset, disjoint_related, plan)
    first, second, words, total, ends_cum = _pair_words_all(tiles, count, related, plan)
    fits = ends_cum.reshape(items, plan.tiles)[:, -1] <= plan.pairs
    bits, changing, rounds = _rounds(tiles, words, first, second, fits, items, plan)
    slot_lead = _first_leaders(tiles, words, first, second, bits)
    # Back to rank space: slot ranks are a permutation of [0, tiles * T).
    width = plan.tile * plan.tiles
    rank = tiles.rank.reshape(items, width)
    target = (rank + jnp.arange(items, dtype=jnp.int32)[:, None] * width).reshape(-1)
    lead = jnp.zeros((items * width,), jnp.int32).at[target].set(slot_lead.reshape(-1), unique_indices=True,
                                                                 mode="promise_in_bounds")
    return Leaders(order, lead.reshape(items, width)[:, :size], fits & ~changing, rounds, total)


def finish_rows(kernel: Callable, inputs: tuple, result: Any, redo, *, rows: int = FALLBACK_ROWS) -> Any:
    """``result`` with the rows flagged ``redo`` recomputed by ``kernel``, ``rows`` at a time (traceable).

    Args:
        kernel: ``(*row_inputs) -> pytree`` on a batch of rows.
        inputs: arrays with a leading row dim ``B``.
        result: pytree of arrays with leading dim ``B`` (what ``kernel`` returns for all rows).
        redo: ``[B]`` bool.
        rows: rows per call of ``kernel`` (static); a ``while_loop`` runs as many calls as needed, none when no row is flagged.

    Returns:
        ``result`` with the flagged rows replaced.
    """
    items = redo.shape[0]
    rows = max(1, min(rows, items))
    everything = jnp.arange(items, dtype=jnp.int32)

    def body(state):
        result, redo = state
        place = running_count(redo) - 1
        take = redo & (place < rows)
        slot = jnp.where(take, place, rows)
        chosen = jnp.zeros((rows + 1,), jnp.int32).at[slot].set(everything, mode="drop")[:rows]
        filled = jnp.zeros((rows + 1,), bool).at[slot].set(True, mode="drop")[:rows]
        redone = kernel(*(x[chosen] for x in inputs))
        target = jnp.where(filled, chosen, items)
        result = jax.tree.map(lambda whole, part: whole.at[target].set(part, mode="drop"), result, redone)
        return result, redo & ~take

    # Under a conditional: XLA hoists loop-invariant work out of a while body
    # (with one row, the whole kernel) and would then run it even for zero trips.
    return lax.cond(jnp.any(redo), lambda: lax.while_loop(lambda s: jnp.any(s[1]), body, (result, redo))[0],
                    lambda: result)


class GroupingStats(NamedTuple):
    """How a parallel grouping call went: rounds run, tile pairs needed and slots, rows finished sequentially."""

    rounds: jax.Array
    pairs: jax.Array
    pair_slots: int
    tile: int
    sequential_rows: jax.Array


def groups_from_leaders(found: Leaders) -> ProposalGroups:
    """Group ids, leaders and counts in input order from the rank-space leaders (the loop's numbering)."""
    items, size = found.lead.shape
    is_leader = found.lead == jnp.arange(size, dtype=jnp.int32)
    number = running_count(is_leader) - 1
    group_at_rank = jnp.where(found.lead >= 0, gather_rows(number, jnp.maximum(found.lead, 0)), -1)
    row_base = jnp.arange(items, dtype=jnp.int32)[:, None] * size
    group = jnp.zeros((items * size,), jnp.int32).at[(found.order + row_base).reshape(-1)].set(
        group_at_rank.reshape(-1), unique_indices=True, mode="promise_in_bounds")
    slot = jnp.where(is_leader, number + row_base, items * size).reshape(-1)
    leader = jnp.full((items * size,), -1, jnp.int32).at[slot].set(found.order.reshape(-1), mode="drop")
    return ProposalGroups(group.reshape(items, size), leader.reshape(items, size), number[:, -1] + 1)


def parallel_group_batch_with_stats(segments, scores, valid, threshold, use_iou, offset, *,
                                    max_rounds: int = DEFAULT_MAX_ROUNDS, pairs_per_tile: int = PAIRS_PER_TILE,
                                    min_pairs: int = MIN_PAIRS, fallback_rows: int = FALLBACK_ROWS) -> tuple[ProposalGroups, GroupingStats]:
    """:func:`parallel_group_batch` and its :class:`GroupingStats`."""
    items, size = scores.shape
    if items == 0 or size == 0:
        unset = jnp.full((items, size), -1, jnp.int32)
        zero = jnp.int32(0)
        return ProposalGroups(unset, unset, jnp.zeros((items,), jnp.int32)), GroupingStats(zero, zero, 0, 0, zero)
    plan = tile_plan(items, size, max_rounds=max_rounds, pairs_per_tile=pairs_per_tile, min_pairs=min_pairs)
    segments, scores, valid = jnp.asarray(segments), jnp.asarray(scores), jnp.asarray(valid)
    dtype = segments.dtype
    threshold = jnp.asarray(threshold, dtype)
    offset = jnp.asarray(offset, dtype)

    def related(leader_start, leader_end, starts, ends):
        return segment_overlap(leader_start, leader_end, starts, ends, use_iou, offset) > threshold

    starts, ends = segments[..., 0], segments[..., 1]
    # Disjoint segments overlap 0, which only a negative threshold is below.
    found = greedy_leaders(starts, ends, scores, valid, related, offset, threshold < 0, plan)
    groups = groups_from_leaders(found)
    redo = ~found.finished

    def sequential(row_segments, row_scores, row_valid):
        return group_batch(row_segments, row_scores, row_valid, threshold, use_iou, offset, min_rows=fallback_rows)

    groups = finish_rows(sequential, (segments, scores, valid), groups, redo, rows=fallback_rows)
    stats = GroupingStats(found.rounds, found.pairs, plan.pairs, plan.tile, jnp.sum(redo, dtype=jnp.int32))
    return groups, stats


def parallel_group_batch(segments, scores, valid, threshold, use_iou, offset, *,
                         max_rounds: int = DEFAULT_MAX_ROUNDS, pairs_per_tile: int = PAIRS_PER_TILE,
                         min_pairs: int = MIN_PAIRS, fallback_rows: int = FALLBACK_ROWS) -> ProposalGroups:
    """The greedy grouping of :func:`jaxfuse._proposals.grouping.group_batch` by parallel rounds (traceable; no validation).

    Same arguments and result, bit for bit (ties, both measures and
    conventions, traced thresholds); see the module docstring for the method.

    Args:
        segments: ``[B, N, 2]`` floats.
        scores: ``[B, N]`` ordering scores, finite where valid.
        valid: ``[B, N]`` bool.
        threshold: scalar; membership is ``overlap > threshold``.
        use_iou: bool scalar, see :func:`jaxfuse._proposals.grouping.segment_overlap`.
        offset: 0 or 1, likewise.
        max_rounds: static: rows still changing after this many rounds are
            finished by the sequential loop.
        pairs_per_tile: static: pair slots per tile (see :func:`tile_plan`);
            rows whose pairs do not fit are finished by the sequential loop.
        min_pairs: static: at least this many pair slots.
        fallback_rows: static: rows per call of the sequential finish.

    Returns:
        :class:`jaxfuse._proposals.grouping.ProposalGroups` with leading dim ``B``.

    Example:
        >>> import jax.numpy as jnp
        >>> groups = parallel_group_batch(jnp.array([[[0., 10.], [1., 9.], [20., 30.]]]),
        ...                               jnp.array([[0.9, 0.8, 0.7]]), jnp.ones((1, 3), bool), 0.25, False, 0)
        >>> groups.group.tolist(), groups.leader.tolist(), groups.count.tolist()
        ([[0, 0, 1]], [[0, 2, -1]], [2])
    """
    return parallel_group_batch_with_stats(segments, scores, valid, threshold, use_iou, offset, max_rounds=max_rounds,
                                           pairs_per_tile=pairs_per_tile, min_pairs=min_pairs,
                                           fallback_rows=fallback_rows)[0]
