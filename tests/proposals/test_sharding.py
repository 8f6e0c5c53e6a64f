"""fuse_proposals_sharded: items split over devices, results identical to one device.

The multi-device checks run in a subprocess with four virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``): the device count is
fixed when JAX starts, so this test process (one device) cannot host them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxfuse._proposals.fuse_proposals import fuse_proposals
from jaxfuse._proposals.sharding import ITEMS_AXIS, fuse_proposals_sharded, item_mesh

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FOUR_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxfuse._proposals.detection_file import fuse_detections_json
    from jaxfuse._proposals.fuse_proposals import fuse_proposals
    from jaxfuse._proposals.sharding import fuse_proposals_sharded

    report = {"devices": len(jax.devices())}
    # Each device compiles its own copy of every program, so the whole script uses one
    # shape: the batch fuse_detections_json makes of SMALL_RESULTS below (float64 under
    # x64, 4 items padded to 16 proposals), one item per device.
    x64 = jax.enable_x64(True)
    x64.__enter__()
    rng = np.random.default_rng(0)
    items, size = 4, 16
    starts = rng.uniform(0, 300, (items, size))
    segments = np.stack([starts, starts + rng.uniform(1, 30, (items, size))], -1)
    scores = rng.uniform(0, 1, (items, size))
    weights = rng.uniform(0, 1, (items, size))
    valid = rng.uniform(size=(items, size)) < 0.8

    def same(a, b):
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        return len(leaves_a) == len(leaves_b) and all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))

    options = dict(temperature=0.2, overlap_threshold=0.25)
    sharded = fuse_proposals_sharded(
        jnp.asarray(segments), jnp.asarray(scores), jnp.asarray(weights), jnp.asarray(valid), **options)
    one_device = fuse_proposals(jnp.asarray(segments), jnp.asarray(scores), jnp.asarray(weights), jnp.asarray(valid), **options)
    report["jax_identical"] = same(one_device, sharded)
    shardings = {type(x.sharding).__name__ + str(x.sharding.spec) for x in jax.tree.leaves(sharded)}
    report["shardings"] = sorted(shardings)
    report["devices_per_leaf"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(sharded)})
    report["shard_rows"] = sorted({s.data.shape[0] for s in sharded.segments.addressable_shards})
    report["shard_devices"] = len({s.device for s in sharded.segments.addressable_shards})

    # numpy in, numpy out; 3 items are padded to 4 (blocks of 1, as above: no new compile).
    # Items are independent, so the reference is the first 3 rows of the one-device result.
    host = fuse_proposals_sharded(segments[:3], scores[:3], weights[:3], valid[:3], **options)
    report["numpy_identical"] = same(jax.tree.map(lambda x: np.asarray(x)[:3], one_device), host)
    report["numpy_type"] = type(host.segments).__name__
    report["dtype"] = str(host.segments.dtype)
    x64.__exit__(None, None, None)

    # jaxfuse fuse goes through the sharded path when several devices are visible
    # (and reuses the programs compiled above).
    data = json.loads(input())
    report["file"] = fuse_detections_json(data, temperature=0.5, weight_field="weight")
    print("REPORT " + json.dumps(report))
    """
)

# Four (video, label) items with weights: one batch of the script's shape, weights included.
SMALL_RESULTS = {"results": {
    "a": [{"label": "x", "score": 0.9, "segment": [0.0, 10.0], "weight": 0.1},
          {"label": "x", "score": 0.6, "segment": [1.0, 9.0], "weight": 0.7}],
    "b": [], "c": [{"label": "y", "score": 0.3, "segment": [5.0, 6.0], "weight": 0.5}],
    "d": [{"label": "x", "score": 0.2, "segment": [3.0, 4.0], "weight": 0.2},
          {"label": "y", "score": 0.8, "segment": [3.0, 5.0], "weight": 0.9}],
}}


def test_four_virtual_devices_give_identical_sharded_results():
    environment = {
        **os.environ,
        "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip(),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": REPOSITORY,
    }
    completed = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICE_SCRIPT], input=json.dumps(SMALL_RESULTS), capture_output=True, text=True,
        env=environment, cwd=REPOSITORY, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT "):])
    assert report["devices"] == 4
    assert report["jax_identical"] and report["numpy_identical"]
    assert report["shardings"] == [f"NamedSharding{jax.sharding.PartitionSpec(ITEMS_AXIS)}"]
    assert report["devices_per_leaf"] == [4] and report["shard_devices"] == 4 and report["shard_rows"] == [1]
    assert report["numpy_type"] == "ndarray" and report["dtype"] == "float64"
    from jaxfuse._proposals.detection_file import fuse_detections_json

    assert report["file"] == fuse_detections_json(SMALL_RESULTS, temperature=0.5, weight_field="weight")


# --------------------------------------------------------------- one device, in process


# The batch shape of tests/core/test_torch_interop.py (weights and valid given): one compiled program for both.
ITEMS, PROPOSALS = 3, 16


@pytest.fixture(scope="module")
def proposals():
    rng = np.random.default_rng(1)
    starts = rng.uniform(0, 50, (ITEMS, PROPOSALS)).astype(np.float32)
    segments = np.stack([starts, starts + 5], -1)
    scores = rng.uniform(0, 1, (ITEMS, PROPOSALS)).astype(np.float32)
    weights = rng.uniform(0, 1, (ITEMS, PROPOSALS)).astype(np.float32)
    valid = rng.uniform(size=(ITEMS, PROPOSALS)) < 0.9
    return segments, scores, weights, valid


def test_single_device_mesh_matches_fuse_proposals(proposals):
    expected = fuse_proposals(*proposals, temperature=0.2)
    got = fuse_proposals_sharded(*proposals, temperature=0.2)
    for name, want in expected._asdict().items():
        if name != "parameters":
            np.testing.assert_array_equal(getattr(got, name), want, err_msg=name)
    np.testing.assert_array_equal(got.parameters.scale, expected.parameters.scale)


def test_leading_dimensions_are_kept(proposals):
    # [3, 16] items as a [3, 1] grid: the same program, the grid shape kept in every field.
    grid = [x[:, None] for x in proposals]
    fused = fuse_proposals_sharded(*grid, temperature=0.2)
    assert fused.segments.shape == (ITEMS, 1, PROPOSALS, 2) and fused.count.shape == (ITEMS, 1)
    flat = fuse_proposals(*proposals, temperature=0.2)
    for name, want in flat._asdict().items():
        if name != "parameters":
            np.testing.assert_array_equal(getattr(fused, name), np.asarray(want)[:, None], err_msg=name)


def test_bad_arguments_are_rejected_before_anything_runs():
    segments, scores = np.zeros((1, 2, 2), np.float32), np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="temperature"):
        fuse_proposals_sharded(segments, scores, temperature=0.0)
    with pytest.raises(ValueError, match="method"):
        fuse_proposals_sharded(segments, scores, method="mean")
    with pytest.raises(TypeError, match="takes no options"):
        fuse_proposals_sharded(segments, scores, df=3.0)
    with pytest.raises(ValueError, match="start <= end"):
        fuse_proposals_sharded(np.array([[[2.0, 1.0]]], np.float32), np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match="at least one device"):
        fuse_proposals_sharded(segments, scores, devices=[])
    with pytest.raises(ValueError, match="repeat"):
        item_mesh([jax.devices()[0]] * 2)
