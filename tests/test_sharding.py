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

from jaxfuse._proposals import fuse_proposals
from jaxfuse._sharding import ITEMS_AXIS, fuse_proposals_sharded, item_mesh

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FOUR_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxfuse._detection_file import fuse_detections_json
    from jaxfuse._proposals import fuse_proposals
    from jaxfuse._sharding import fuse_proposals_sharded

    report = {"devices": len(jax.devices())}
    rng = np.random.default_rng(0)
    items, size = 8, 32
    starts = rng.uniform(0, 300, (items, size)).astype(np.float32)
    segments = np.stack([starts, starts + rng.uniform(1, 30, (items, size)).astype(np.float32)], -1)
    scores = rng.uniform(0, 1, (items, size)).astype(np.float32)
    weights = rng.uniform(0, 1, (items, size)).astype(np.float32)
    valid = rng.uniform(size=(items, size)) < 0.8

    def same(a, b):
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        return len(leaves_a) == len(leaves_b) and all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))

    options = dict(temperature=0.2, overlap_threshold=0.25)
    one_device = fuse_proposals(jnp.asarray(segments), jnp.asarray(scores), jnp.asarray(weights), jnp.asarray(valid), **options)
    sharded = fuse_proposals_sharded(
        jnp.asarray(segments), jnp.asarray(scores), jnp.asarray(weights), jnp.asarray(valid), **options)
    report["jax_identical"] = same(one_device, sharded)
    shardings = {type(x.sharding).__name__ + str(x.sharding.spec) for x in jax.tree.leaves(sharded)}
    report["shardings"] = sorted(shardings)
    report["devices_per_leaf"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(sharded)})
    report["shard_rows"] = sorted({s.data.shape[0] for s in sharded.segments.addressable_shards})
    report["shard_devices"] = len({s.device for s in sharded.segments.addressable_shards})

    # numpy in, numpy out; 6 items are padded to 8 (blocks of 2, as above: no new compile).
    host = fuse_proposals_sharded(segments[:6], scores[:6], weights[:6], valid[:6], **options)
    report["numpy_identical"] = same(fuse_proposals(segments[:6], scores[:6], weights[:6], valid[:6], **options), host)
    report["numpy_type"] = type(host.segments).__name__

    # jaxfuse fuse goes through the sharded path when several devices are visible.
    data = json.loads(input())
    report["file"] = fuse_detections_json(data, temperature=0.5)
    print("REPORT " + json.dumps(report))
    """
)

SMALL_RESULTS = {"results": {
    "a": [{"label": "x", "score": 0.9, "segment": [0.0, 10.0]}, {"label": "x", "score": 0.6, "segment": [1.0, 9.0]}],
    "b": [], "c": [{"label": "y", "score": 0.3, "segment": [5.0, 6.0]}],
    "d": [{"label": "x", "score": 0.2, "segment": [3.0, 4.0]}, {"label": "y", "score": 0.8, "segment": [3.0, 5.0]}],
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
    assert report["devices_per_leaf"] == [4] and report["shard_devices"] == 4 and report["shard_rows"] == [2]
    assert report["numpy_type"] == "ndarray"
    from jaxfuse._detection_file import fuse_detections_json

    assert report["file"] == fuse_detections_json(SMALL_RESULTS, temperature=0.5)


# --------------------------------------------------------------- one device, in process


def test_single_device_mesh_matches_fuse_proposals():
    rng = np.random.default_rng(1)
    starts = rng.uniform(0, 50, (3, 16)).astype(np.float32)
    segments = np.stack([starts, starts + 5], -1)
    scores = rng.uniform(0, 1, (3, 16)).astype(np.float32)
    expected = fuse_proposals(segments, scores, temperature=0.3)
    got = fuse_proposals_sharded(segments, scores, temperature=0.3)
    for name, want in expected._asdict().items():
        if name != "parameters":
            np.testing.assert_array_equal(getattr(got, name), want, err_msg=name)
    np.testing.assert_array_equal(got.parameters.scale, expected.parameters.scale)


def test_leading_dimensions_are_kept():
    segments = np.tile(np.array([[0.0, 10.0], [1.0, 9.0]], np.float32), (2, 3, 1, 1))
    scores = np.tile(np.array([0.9, 0.5], np.float32), (2, 3, 1))
    fused = fuse_proposals_sharded(segments, scores)
    assert fused.segments.shape == (2, 3, 2, 2) and fused.count.shape == (2, 3)
    np.testing.assert_array_equal(fused.count, 1)


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
