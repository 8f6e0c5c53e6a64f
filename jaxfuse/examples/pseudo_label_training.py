"""A jitted training step with the published pseudo labels inside it (Zhou et al., CVPR 2023).

Run: ``python -m jaxfuse.examples.pseudo_label_training [--videos 8] [--max-length 400] [--steps 30]``

A toy weakly supervised TAL model (a per-snippet linear layer over the
features, ``C`` action classes plus background) learns from video-level labels
only. Every step, as in GauFuse_WSTAL's training loop:

1. the model's CAS (softmax over classes and background, without the
   background column) and video scores (the mean of each class's top-k
   snippets) go through :func:`jaxfuse.pseudo_labels` at the current
   temperature, under ``stop_gradient``: proposals, fusion, segment-to-snippet LP;
2. the loss is the video-level binary cross-entropy plus the snippet-level
   cross-entropy against those pseudo labels (published ``compute_distloss``:
   ``-(log_softmax(logits) * labels).sum(-1).mean()``).

The temperature follows the published schedule from 0.02 down to 0.0016
(geometrically here); it is a traced argument, so the step compiles once.
The features are the synthetic videos' noisy CAS plus noise, so the toy has
something to learn; the printout shows the loss falling and the pseudo labels'
LP outcomes.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxfuse

TOP_K_FRACTION = 8  # video score: mean of the top L / 8 snippets of a class


class Batch(NamedTuple):
    features: jax.Array  # [V, L, D]
    length: jax.Array  # [V] int32
    video_labels: jax.Array  # [V, C] 0/1


def make_batch(num_videos: int, max_length: int, num_classes: int, seed: int) -> Batch:
    videos = jaxfuse.synthetic_videos(
        num_videos=num_videos, num_classes=num_classes, min_length=max(120, max_length // 2), max_length=max_length,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    features = np.concatenate([videos.cas, rng.normal(scale=0.1, size=videos.cas.shape)], axis=-1).astype(np.float32)
    inside = np.arange(videos.cas.shape[1])[None, :, None] < videos.length[:, None, None]
    labels = np.zeros((num_videos, num_classes), np.float32)
    labels[videos.ground_truth.video, videos.ground_truth.label] = 1
    return Batch(jnp.asarray(features * inside), jnp.asarray(videos.length), jnp.asarray(labels))


def init_params(key, feature_dim: int, num_classes: int):
    return {"w": 0.1 * jax.random.normal(key, (feature_dim, num_classes + 1)), "b": jnp.zeros(num_classes + 1)}


def forward(params, batch: Batch):
    """Snippet logits ``[V, L, C + 1]``, the CAS ``[V, L, C]`` and video scores ``[V, C]``."""
    logits = batch.features @ params["w"] + params["b"]
    inside = jnp.arange(logits.shape[1])[None, :] < batch.length[:, None]
    cas = jnp.where(inside[..., None], jax.nn.softmax(logits, axis=-1)[..., :-1], 0)
    k = max(1, logits.shape[1] // TOP_K_FRACTION)
    video_scores = jnp.mean(jax.lax.top_k(jnp.moveaxis(cas, 1, 2), k)[0], axis=-1)
    return logits, cas, video_scores, inside


def make_train_step(optimizer, *, max_classes: int):
    @jax.jit
    def train_step(params, opt_state, batch: Batch, temperature):
        def loss_fn(params):
            logits, cas, video_scores, inside = forward(params, batch)
            pseudo = jaxfuse.pseudo_labels(
                jax.lax.stop_gradient(cas), jax.lax.stop_gradient(video_scores), length=batch.length,
                temperature=temperature, max_classes=max_classes, max_proposals=512, max_segments=64,
            )
            video_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(
                jnp.log(video_scores + 1e-6) - jnp.log1p(-video_scores + 1e-6), batch.video_labels))
            # Snippets with a pseudo label of any class learn it; the rest learn background.
            labels = jnp.concatenate([pseudo.labels, jnp.clip(1 - pseudo.labels.sum(-1, keepdims=True), 0, 1)], -1)
            snippet_loss = -jnp.sum(jnp.where(inside[..., None], jax.nn.log_softmax(logits) * labels, 0)) / jnp.sum(inside)
            return video_loss + snippet_loss, (video_loss, snippet_loss, pseudo.result)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    return train_step


def temperature_at(step: int, steps: int, start: float = 0.02, end: float = 0.0016) -> float:
    return start * (end / start) ** (step / max(steps - 1, 1))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=400)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    batch = make_batch(args.videos, args.max_length, args.classes, args.seed)
    params = init_params(jax.random.PRNGKey(args.seed), batch.features.shape[-1], args.classes)
    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(params)
    train_step = make_train_step(optimizer, max_classes=min(4, args.classes))
    losses = []
    for step in range(args.steps):
        start = time.perf_counter()
        params, opt_state, loss, (video_loss, snippet_loss, codes) = train_step(
            params, opt_state, batch, jnp.float32(temperature_at(step, args.steps))
        )
        loss = float(loss)
        seconds = time.perf_counter() - start
        losses.append(loss)
        codes = np.asarray(codes)
        outcome = {jaxfuse.LPResultCode(c).name: int((codes == c).sum()) for c in np.unique(codes)}
        print(f"step {step:3d}  T={temperature_at(step, args.steps):.4f}  loss {loss:.4f} "
              f"(video {float(video_loss):.4f}, snippets {float(snippet_loss):.4f})  {seconds * 1e3:7.1f} ms  {outcome}")
    return {"losses": losses, "compiled_steps": train_step._cache_size()}


if __name__ == "__main__":
    main()
