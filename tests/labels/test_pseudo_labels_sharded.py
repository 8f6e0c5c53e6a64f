"""pseudo_labels in a data-parallel training step: the video batch sharded over 4 devices gives the unsharded labels.

The device count is fixed when JAX starts, so the check runs in a subprocess with four virtual CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``), as in tests/test_sharding.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import jaxfuse

    videos = jaxfuse.synthetic_videos(num_videos=8, num_classes=3, min_length=120, max_length=200, seed=4)
    options = dict(max_classes=2, max_proposals=256, max_segments=48)

    @jax.jit
    def step(cas, video_scores, length, temperature):
        # A training step's use: labels under stop_gradient, reduced to a loss-like scalar too.
        out = jaxfuse.pseudo_labels(jax.lax.stop_gradient(cas), video_scores, length=length, temperature=temperature,
                                    **options)
        return out, jnp.sum(out.labels * cas)

    arrays = (jnp.asarray(videos.cas), jnp.asarray(videos.video_scores), jnp.asarray(videos.length))
    mesh = Mesh(np.array(jax.devices()), ("videos",))
    by_video = NamedSharding(mesh, PartitionSpec("videos"))
    sharded = [jax.device_put(a, by_video) for a in arrays]
    out, loss = step(*sharded, jnp.float32(0.02))
    reference, reference_loss = step(*[jax.device_put(a, jax.devices()[0]) for a in arrays], jnp.float32(0.02))
    eager = jaxfuse.pseudo_labels(videos.cas, videos.video_scores, length=videos.length, temperature=0.02, **options)
    report = {
        "devices": len(jax.devices()),
        "input_shards": len(sharded[0].sharding.device_set),
        "labels_shards": len(out.labels.sharding.device_set),
        "same": {name: bool(np.array_equal(np.asarray(getattr(out, name)), np.asarray(getattr(reference, name))))
                 for name in out._fields},
        "same_as_eager": bool(np.array_equal(np.asarray(out.labels), eager.labels)
                              and np.array_equal(np.asarray(out.result), eager.result)),
        "loss": [float(loss), float(reference_loss)],
        "solved": int((np.asarray(out.result) == int(jaxfuse.LPResultCode.SUCCESSFUL)).sum()),
        "labelled": int((np.asarray(out.labels) > 0).sum()),
    }
    print("REPORT " + json.dumps(report))
    """
)


def test_sharded_training_step_gives_the_unsharded_labels():
    environment = {
        **os.environ,
        "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip(),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": REPOSITORY,
    }
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, env=environment, cwd=REPOSITORY,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")][-1]
    report = json.loads(line[len("REPORT "):])
    assert report["devices"] == 4 and report["input_shards"] == 4
    assert all(report["same"].values()), report["same"]
    assert report["same_as_eager"]
    assert report["loss"][0] == report["loss"][1]
    assert report["solved"] >= 4 and report["labelled"] >= 50  # the comparison is not between empty outputs
