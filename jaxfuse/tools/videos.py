"""Seeded synthetic videos with ground truth, for judging post-processing by detection mAP.

A weakly supervised TAL model emits, per video, a class activation sequence
(CAS) and video-level class scores. Here both are simulated from known actions,
so the mAP of any post-processing (NMS, Soft-NMS, instance fusion) can be
measured against the truth that produced them.

The model of one video, every parameter a field of :class:`VideoParameters`.
A WSTAL CAS is a class probability (a softmax or sigmoid output, often times an
attention), so the model is built in logit space and squashed by a sigmoid:

* ``L`` snippets, uniform in ``[min_length, max_length]``.
* ``1 .. max_classes_per_video`` classes are *present*; ``min_actions ..
  max_actions`` actions are placed, each of a present class, with lengths
  uniform in ``[min_action_length, max_action_length]`` (the upper end
  capped in videos too short to hold them all) and at least ``min_gap``
  snippets of background between two actions (so truth segments never overlap).
* Clean logit of a class: ``background_logit`` outside its actions, each action
  at its own level ``U(action_logit)``; the indicator is smoothed by a moving
  average of ``ramp`` snippets: linear ramps of ``ramp`` snippets centred on
  each true boundary (the *boundary blur*; the logit midpoint is the truth;
  ``ramp <= 1`` keeps it rectangular).
* *Spurious peaks*: on every class that has a CAS worth thresholding (present
  or confused, see below), ``Poisson(spurious_rate * L)`` triangular bumps of
  about ``spurious_length`` snippets at random places, each raising the logit
  by ``U(0, spurious_height) * (mean action logit - background_logit)``: the
  false positives every real CAS has.
* *Noise*: Gaussian, in logit space: i.i.d. ``N(0, 1)`` per snippet and
  class, smoothed by a moving average of ``noise_smoothing`` snippets (real
  CAS are temporally correlated), rescaled to standard deviation ``noise``.
* ``cas = sigmoid(logit)``; zero after each video's length.
* Video scores: present classes ``U(present_score)``, absent ones
  ``U(absent_score)``; with probability ``confusion`` per video one absent
  class is *confused*: it scores ``U(confused_score)`` (passing the published
  class threshold 0.16) and its CAS holds spurious peaks and noise only, so
  whatever is detected there is a false positive.

With the defaults the background sits near ``sigmoid(-6) = 0.0025`` and
actions at 0.27 to 0.88, so the published levels ``0.001 .. 0.039`` (logits
-6.9 to -3.2) cut the noisy background into fragments and the ramps at
different widths: proposals of many widths around every action, biased wide
(they cut the lower part of each ramp), as instance fusion meets them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxfuse._evaluation.evaluate import GroundTruth


class VideoParameters(NamedTuple):
    """Parameters of :func:`synthetic_videos` (the defaults are the study's).

    Attributes:
        num_videos: number of videos.
        num_classes: number of action classes.
        min_length: shortest video, in snippets.
        max_length: longest video, in snippets.
        min_actions: fewest actions per video (>= 1).
        max_actions: most actions per video.
        max_classes_per_video: most distinct present classes per video.
        min_action_length: shortest action, in snippets (>= 2, the shortest
            proposal).
        max_action_length: longest action, in snippets.
        min_gap: fewest background snippets between two actions (and before
            the first, after the last).
        background_logit: logit of the CAS outside actions.
        action_logit: ``(low, high)``: each action's logit is uniform in it.
        ramp: width in snippets of the linear ramps at each boundary (moving
            average of the indicator, centred when odd); ``0`` or ``1``: rectangular.
        noise: standard deviation of the Gaussian noise added to the logit.
        noise_smoothing: moving-average width applied to the noise before
            rescaling it to ``noise`` (1: white noise).
        spurious_rate: spurious peaks per snippet, per class with a CAS.
        spurious_height: a spurious peak raises the logit by ``U(0,
            spurious_height)`` times the mean action logit above the background.
        spurious_length: base width, in snippets, of a spurious (triangular) peak.
        present_score: ``(low, high)`` of the video scores of present classes.
        absent_score: ``(low, high)`` of the video scores of absent classes.
        confusion: probability that a video has one confused absent class.
        confused_score: ``(low, high)`` of a confused class's video score.
        seed: random seed; the same parameters give the same videos.
    """

    num_videos: int = 200
    num_classes: int = 5
    min_length: int = 200
    max_length: int = 800
    min_actions: int = 1
    max_actions: int = 5
    max_classes_per_video: int = 2
    min_action_length: int = 8
    max_action_length: int = 80
    min_gap: int = 12
    background_logit: float = -6.0
    action_logit: tuple[float, float] = (-1.0, 2.0)
    ramp: int = 21
    noise: float = 1.5
    noise_smoothing: int = 3
    spurious_rate: float = 0.02
    spurious_height: float = 0.8
    spurious_length: int = 6
    present_score: tuple[float, float] = (0.5, 1.0)
    absent_score: tuple[float, float] = (0.0, 0.1)
    confusion: float = 0.3
    confused_score: tuple[float, float] = (0.2, 0.5)
    seed: int = 0


class SyntheticVideos(NamedTuple):
    """A batch of synthetic videos and their truth.

    Attributes:
        cas: ``[V, L_max, C]`` float32 class activation sequences, zero padded
            after each video's length (``L_max`` the longest video).
        length: ``[V]`` int32 snippets per video.
        video_scores: ``[V, C]`` float32 video-level class scores.
        ground_truth: a :class:`jaxfuse.GroundTruth` (video index, class, segment
            ``[start, end)`` in snippets).
        clean: ``[V, L_max, C]`` float32 ``sigmoid`` of the clean logit (ramps
            included, no noise, no spurious peaks), for plots and checks;
            zero after each video's length.
        parameters: the :class:`VideoParameters` used.
    """

    cas: np.ndarray
    length: np.ndarray
    video_scores: np.ndarray
    ground_truth: GroundTruth
    clean: np.ndarray
    parameters: VideoParameters


def _check(parameters: VideoParameters) -> None:
    p = parameters
    if not 1 <= p.min_actions <= p.max_actions:
        raise ValueError(f"need 1 <= min_actions <= max_actions, got {p.min_actions}, {p.max_actions}")
    if not 2 <= p.min_action_length <= p.max_action_length:
        raise ValueError(f"need 2 <= min_action_length <= max_action_length, got {p.min_action_length}, {p.max_action_length}")
    if not 1 <= p.min_length <= p.max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {p.min_length}, {p.max_length}")
    room = p.max_actions * (p.min_action_length + p.min_gap) + p.min_gap
    if room > p.min_length:
        raise ValueError(
            f"{p.max_actions} actions of at least {p.min_action_length} snippets with gaps of {p.min_gap} need "
            f"{room} snippets; raise min_length ({p.min_length}) or lower the others"
        )
    if not 1 <= p.max_classes_per_video <= p.num_classes or p.num_videos < 1:
        raise ValueError("need num_videos >= 1 and 1 <= max_classes_per_video <= num_classes")
    if min(p.noise, p.spurious_rate, p.spurious_height, p.confusion) < 0 or p.confusion > 1:
        raise ValueError("noise, spurious_rate, spurious_height must be >= 0 and confusion in [0, 1]")
    if p.noise_smoothing < 1:
        raise ValueError(f"noise_smoothing must be >= 1, got {p.noise_smoothing}")


def _place_actions(rng, length: int, count: int, p: VideoParameters) -> list[tuple[int, int]]:
    """``count`` non-overlapping ``[start, end)`` with at least ``min_gap`` snippets around each.

    In a short video the longest action is capped so that all of them fit.
    """
    longest = min(p.max_action_length, (length - (count + 1) * p.min_gap) // count)
    durations = rng.integers(p.min_action_length, longest + 1, count)
    slack = length - durations.sum() - (count + 1) * p.min_gap
    # Split the slack at random among the count + 1 gaps (sorted uniform cuts).
    cuts = np.sort(rng.integers(0, slack + 1, count))
    extra_gaps = np.diff(np.concatenate([[0], cuts]))
    segments, position = [], 0
    for duration, extra in zip(durations, extra_gaps):
        start = position + p.min_gap + int(extra)
        segments.append((start, start + int(duration)))
        position = start + int(duration)
    return segments


def _ramped(indicator: np.ndarray, ramp: int) -> np.ndarray:
    """Moving average of width ``ramp`` (centred): linear ramps across each edge."""
    if ramp <= 1:
        return indicator
    kernel = np.ones(ramp) / ramp
    return np.convolve(indicator, kernel, mode="same")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow warning for very negative logits


def _smoothed_noise(rng, shape: tuple[int, int], width: int) -> np.ndarray:
    """Unit-variance Gaussian noise ``[L, C]``, moving-averaged over ``width`` snippets."""
    white = rng.normal(size=(shape[0] + width - 1, shape[1]))
    if width == 1:
        return white
    cumulative = np.concatenate([np.zeros((1, shape[1])), np.cumsum(white, axis=0)])
    # The mean of `width` unit-variance samples has variance 1 / width.
    return (cumulative[width:] - cumulative[:-width]) / np.sqrt(width)


def synthetic_videos(parameters: VideoParameters | None = None, **overrides) -> SyntheticVideos:
    """Seeded synthetic CAS, video scores and ground truth (see the module docstring).

    Args:
        parameters: a :class:`VideoParameters` (default: its defaults).
        **overrides: fields to replace, e.g. ``noise=0.0``.

    Returns:
        A :class:`SyntheticVideos`.

    Raises:
        ValueError: inconsistent parameters (e.g. actions that cannot fit the
            shortest video), naming them.

    Example:
        >>> videos = synthetic_videos(num_videos=4, seed=1)
        >>> videos.cas.shape[0], videos.cas.shape[2], videos.video_scores.shape
        (4, 5, (4, 5))
    """
    p = (parameters or VideoParameters())._replace(**overrides)
    _check(p)
    rng = np.random.default_rng(p.seed)
    lengths = rng.integers(p.min_length, p.max_length + 1, p.num_videos)
    longest = int(lengths.max())
    clean = np.zeros((p.num_videos, longest, p.num_classes))
    cas = np.zeros_like(clean)
    video_scores = rng.uniform(*p.absent_score, size=(p.num_videos, p.num_classes))
    spurious_scale = p.spurious_height * (np.mean(p.action_logit) - p.background_logit)
    truth_video, truth_label, truth_segments = [], [], []
    for video, length in enumerate(lengths.tolist()):
        num_present = int(rng.integers(1, p.max_classes_per_video + 1))
        present = rng.choice(p.num_classes, num_present, replace=False)
        count = max(int(rng.integers(p.min_actions, p.max_actions + 1)), num_present)
        # Every present class gets at least one action; the rest are drawn among them.
        labels = np.concatenate([present, rng.choice(present, count - num_present)])
        rng.shuffle(labels)
        logit = np.full((length, p.num_classes), float(p.background_logit))
        for (start, end), label in zip(_place_actions(rng, length, count, p), labels.tolist()):
            indicator = np.zeros(length)
            indicator[start:end] = rng.uniform(*p.action_logit) - p.background_logit
            logit[:, label] += _ramped(indicator, p.ramp)
            truth_video.append(video)
            truth_label.append(label)
            truth_segments.append((start, end))
        clean[video, :length] = _sigmoid(logit)
        video_scores[video, present] = rng.uniform(*p.present_score, size=num_present)
        with_cas = list(present)
        if rng.uniform() < p.confusion and num_present < p.num_classes:
            confused = int(rng.choice(np.setdiff1d(np.arange(p.num_classes), present)))
            video_scores[video, confused] = rng.uniform(*p.confused_score)
            with_cas.append(confused)

        for label in with_cas:
            for _ in range(rng.poisson(p.spurious_rate * length)):
                half_width = max(1, int(rng.integers(p.spurious_length // 4, p.spurious_length + 1)))
                centre = int(rng.integers(0, length))
                offsets = np.arange(-half_width, half_width + 1)
                bump = spurious_scale * rng.uniform() * (1 - np.abs(offsets) / (half_width + 1))
                inside = (centre + offsets >= 0) & (centre + offsets < length)
                logit[centre + offsets[inside], label] += bump[inside]
        if p.noise > 0:
            logit += _smoothed_noise(rng, logit.shape, p.noise_smoothing) * p.noise
        cas[video, :length] = _sigmoid(logit)

    ground_truth = GroundTruth(
        video=np.asarray(truth_video, np.int64),
        label=np.asarray(truth_label, np.int64),
        segments=np.asarray(truth_segments, np.float64).reshape(-1, 2),
    )
    return SyntheticVideos(
        cas=cas.astype(np.float32),
        length=lengths.astype(np.int32),
        video_scores=video_scores.astype(np.float32),
        ground_truth=ground_truth,
        clean=clean.astype(np.float32),
        parameters=p,
    )
