"""Shared fixtures: dtypes (float64 runs under jax.enable_x64), jit or not, random groups."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before jaxfuse is imported: the persistent compilation cache of this session
# (and of the subprocesses it starts) lives in a fresh temporary directory, never
# in the user's home, and starts empty as it does on CI.
if "JAXFUSE_COMPILATION_CACHE" not in os.environ:
    _session_cache = tempfile.mkdtemp(prefix="jaxfuse-test-cache-")
    os.environ["JAXFUSE_COMPILATION_CACHE"] = _session_cache
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    """The dtype under test; float64 tests run with x64 enabled for their duration only."""
    if request.param == np.float64:
        with jax.enable_x64(True):
            yield request.param
    else:
        yield request.param


def tolerance(dtype) -> float:
    """Relative tolerance for comparing a kernel against an independent float64 reference."""
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-11


def random_groups(rng, groups: int, members: int, coordinates: int = 3, dtype=np.float64, min_size: int = 1):
    """Random padded groups: values [G, M, K], weights [G, M], mask [G, M] with random sizes."""
    sizes = rng.integers(min_size, members + 1, size=groups)
    mask = np.arange(members)[None, :] < sizes[:, None]
    # Shuffle the real slots so that padding is not always at the end.
    for row in mask:
        rng.shuffle(row)
    centres = rng.uniform(-50, 500, size=(groups, 1, coordinates))
    values = (centres + rng.normal(scale=rng.uniform(0.5, 20, size=(groups, 1, 1)), size=(groups, members, coordinates)))
    weights = rng.uniform(0, 1, size=(groups, members))
    return values.astype(dtype), weights.astype(dtype), mask


# One batch shape that tests share, so that every (template, options, dtype) compiles
# once per session: XLA compilation, not the fits, dominates the suite's time.
SHARED_GROUPS, SHARED_MEMBERS, SHARED_COORDINATES = 32, 16, 2


def pad_to_shared_shape(values, weights, mask=None):
    """Pad ``[G, M, K]`` groups into the shared shape: empty groups, masked members, coordinate 0 repeated.

    Padding cannot change a group's fit (tests/fusion/test_fuse.py checks padded + mask equals
    unpadded); repeating a real coordinate keeps each group's result code and steps.
    """
    values, weights = np.asarray(values), np.asarray(weights)
    groups, members, coordinates = values.shape
    assert groups <= SHARED_GROUPS and members <= SHARED_MEMBERS and coordinates <= SHARED_COORDINATES, values.shape
    mask = np.ones((groups, members), bool) if mask is None else np.asarray(mask)
    padded_values = np.zeros((SHARED_GROUPS, SHARED_MEMBERS, SHARED_COORDINATES), values.dtype)
    padded_values[:groups, :members, :coordinates] = values
    padded_values[:groups, :members, coordinates:] = values[..., :1]
    padded_weights = np.zeros((SHARED_GROUPS, SHARED_MEMBERS), weights.dtype)
    padded_weights[:groups, :members] = weights
    padded_mask = np.zeros((SHARED_GROUPS, SHARED_MEMBERS), bool)
    padded_mask[:groups, :members] = mask
    return padded_values, padded_weights, padded_mask


def fuse_in_shared_shape(fuse, values, weights, mask=None, **options):
    """``fuse(values, weights, mask, **options)`` run in the shared shape, sliced back to ``[G, M, K]``."""
    groups, members, coordinates = np.shape(values)
    fused = fuse(*pad_to_shared_shape(values, weights, mask), **options)
    per_coordinate = lambda leaf: leaf[:groups, :coordinates]  # noqa: E731
    return fused._replace(
        location=per_coordinate(fused.location),
        parameters=jax.tree_util.tree_map(per_coordinate, fused.parameters),
        probabilities=fused.probabilities[:groups, :members],
        result=fused.result[:groups],
        steps=fused.steps[:groups],
    )
