"""The *cold_start* section: what a one-shot user waits for, in fresh processes, against the plain loops.

Each workload runs in two fresh interpreters sharing one new, empty cache
directory (``JAXFUSE_COMPILATION_CACHE``):

1. *first call, empty cache*: import jaxfuse, build the (seeded) data, time
   the first call: tracing, compilation and the run, as on a new machine;
2. *first call, warm cache*: the same in a new process, now loading the
   programs the first one stored (the count of cache hits, JAX's and whole
   executables from jaxfuse's store, is reported);
   then, in that process, the *warm* time (median of repeated calls) and the
   plain loop's time on the same data.

Workloads (THUMOS14 scale, as issue 9 names them):

* ``import``: ``import jaxfuse`` (target under 1.5 s);
* ``fuse_proposal_lists``: 400 (video, class) items of 20 to 800 raw
  proposals, the published rule and Gaussian template, against the published
  loop (:func:`jaxfuse.bench.published.published_fusion_loop`);
* ``detect``: CAS to detections for 212 synthetic videos x 20 classes against
  the per-run proposal loop plus the published loop on the same items;
* ``soft_nms``: ActionFormer's THUMOS post-processing (212 videos x 2,000
  candidates, Soft-NMS per class with Gaussian decay, sigma 0.5, min score
  0.001, IoU, then the 200 best per video) against the same as a numpy loop
  (:func:`~jaxfuse.bench.baselines.actionformer_postprocess_loop`, timed on
  the first videos and scaled);
* ``fuse_cli``: the ``jaxfuse fuse`` command on a 212-video x 2,000-detection
  file: the wall time of the whole process, against a plain script (parse the
  JSON, the published loop per (video, label), write the JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxfuse.bench.section import Section, format_ratio, format_seconds
from jaxfuse.bench.sizes import PUBLISHED_OVERLAP, TEMPERATURE, Sizes

WORKLOADS = ("import", "fuse_proposal_lists", "detect", "soft_nms", "fuse_cli")

SOFT_NMS_SIGMA, SOFT_NMS_MIN_SCORE, SOFT_NMS_IOU, MAX_SEGMENTS = 0.5, 0.001, 0.1, 200

TARGETS = {  # issue 9, on a 2-core CPU
    "import_seconds": 1.5,
    "fuse_proposal_lists_empty_cache_vs_loop": 6.0,
    "fuse_proposal_lists_warm_cache_vs_loop": 2.0,
    "fuse_proposal_lists_warm_speedup": 30.0,
    "soft_nms_warm_cache_vs_loop": 1.0,
    "soft_nms_warm_speedup": 10.0,
    "fuse_cli_warm_cache_seconds": 3.0,
}

# The child times its own ``import jaxfuse`` before anything else of jaxfuse is imported.
_CHILD = """
import json, sys, time
start = time.perf_counter()
import jaxfuse
import_seconds = time.perf_counter() - start
from jaxfuse.bench.cold_start import child_main
child_main(import_seconds, json.loads(sys.argv[1]))
"""


class Workload(NamedTuple):
    """One measured call and its plain-loop baseline (None: no loop); ``loop_scale`` multiplies the loop's time."""

    call: Callable[[], Any]
    loop: Callable[[], Any] | None
    loop_scale: float = 1.0
    description: str = ""


# ------------------------------------------------------------------ workloads


def _proposal_lists_workload(sizes: Sizes) -> Workload:
    import jaxfuse
    from jaxfuse.bench.data import thumos_like_proposal_items
    from jaxfuse.bench.published import published_fusion_loop

    segments, contrast, inner = thumos_like_proposal_items(sizes.cold_items)

    def call():
        return jaxfuse.fuse_proposal_lists(segments, contrast, inner, preset="published", temperature=TEMPERATURE,
                                           overlap_threshold=PUBLISHED_OVERLAP)

    def loop():
        return [published_fusion_loop(s, c, w, temperature=TEMPERATURE, threshold=PUBLISHED_OVERLAP)
                for s, c, w in zip(segments, contrast, inner)]

    proposals = sum(len(c) for c in contrast)
    return Workload(call, loop, 1.0, f"{len(contrast)} items, {proposals:,} proposals")


def _detect_workload(sizes: Sizes) -> Workload:
    import jaxfuse
    from jaxfuse.bench.baselines import reference_cas_proposals
    from jaxfuse.bench.published import published_fusion_loop

    videos = jaxfuse.synthetic_videos(num_videos=sizes.cold_videos, num_classes=20, min_length=400, max_length=512,
                                      confusion=0.5, seed=0)
    cas, video_scores, length = np.asarray(videos.cas, np.float32), videos.video_scores, videos.length
    selected = np.argwhere(video_scores >= jaxfuse.PUBLISHED_CLASS_THRESHOLD)

    def call():
        return jaxfuse.detect(cas, video_scores, length=length, preset="published", temperature=TEMPERATURE)

    def loop():
        out = []
        for video, label in selected:
            segments, contrast, inner = reference_cas_proposals(cas[video, :, label], int(length[video]))
            out.append(published_fusion_loop(segments, contrast, inner, temperature=TEMPERATURE,
                                             threshold=PUBLISHED_OVERLAP))
        return out

    return Workload(call, loop, 1.0, f"{sizes.cold_videos} videos x 20 classes, {len(selected)} items")


def _soft_nms_workload(sizes: Sizes) -> Workload:
    import jaxfuse
    from jaxfuse.bench.baselines import actionformer_postprocess_loop
    from jaxfuse.bench.data import actionformer_like_candidates

    candidates = actionformer_like_candidates(sizes.cold_videos, sizes.cold_candidates)
    keys = [(video, label) for video in range(sizes.cold_videos) for label in np.unique(candidates.labels[video])]
    members = [candidates.labels[video] == label for video, label in keys]
    segments = [candidates.segments[video][m] for (video, _), m in zip(keys, members)]
    scores = [candidates.scores[video][m] for (video, _), m in zip(keys, members)]

    def call():
        kept = jaxfuse.fuse_proposal_lists(segments, scores, method="soft_nms", overlap="iou", discrete=False,
                                           overlap_threshold=SOFT_NMS_IOU, sigma=SOFT_NMS_SIGMA,
                                           min_score=SOFT_NMS_MIN_SCORE)
        per_video: dict[int, list] = {}
        for (video, label), item in zip(keys, kept):
            per_video.setdefault(video, []).append((item.segments, item.scores, np.full(item.count, label)))
        out = []
        for parts in per_video.values():
            all_scores = np.concatenate([p[1] for p in parts])
            best = np.argsort(-all_scores, kind="stable")[:MAX_SEGMENTS]
            out.append((np.concatenate([p[0] for p in parts])[best], all_scores[best],
                        np.concatenate([p[2] for p in parts])[best]))
        return out

    subset = min(sizes.cold_loop_videos, sizes.cold_videos)

    def loop():
        return actionformer_postprocess_loop(candidates.segments[:subset], candidates.scores[:subset],
                                             candidates.labels[:subset], sigma=SOFT_NMS_SIGMA,
                                             min_score=SOFT_NMS_MIN_SCORE, max_seg_num=MAX_SEGMENTS)

    return Workload(call, loop, sizes.cold_videos / subset,
                    f"{sizes.cold_videos} videos x {sizes.cold_candidates:,} candidates, {len(keys)} (video, class) "
                    f"items; loop timed on {subset} videos, scaled")


def _detection_file_loop(input_path: str, output_path: str) -> None:
    """The plain script a user writes: parse, the published loop per (video, label), write."""
    from jaxfuse.bench.published import published_fusion_loop

    with open(input_path, encoding="utf-8") as stream:
        results = json.load(stream)["results"]
    fused: dict[str, list] = {}
    for video, entries in results.items():
        labels = sorted({entry["label"] for entry in entries})
        fused[video] = []
        for label in labels:
            chosen = [entry for entry in entries if entry["label"] == label]
            segments = np.array([entry["segment"] for entry in chosen], np.float64)
            scores = np.array([entry["score"] for entry in chosen], np.float64)
            for start, end, score in published_fusion_loop(segments, scores, temperature=TEMPERATURE,
                                                           threshold=PUBLISHED_OVERLAP, discrete=False):
                fused[video].append({"label": label, "score": float(score), "segment": [float(start), float(end)]})
    with open(output_path, "w", encoding="utf-8") as stream:
        json.dump({"version": "VERSION 1.3", "results": fused, "external_data": {}}, stream)


def _fuse_cli_workload(sizes: Sizes, input_path: str, output_path: str) -> Workload:
    from jaxfuse._proposals.detection_file import fuse_detection_file

    def call():
        return fuse_detection_file(input_path, output_path, temperature=TEMPERATURE, progress=False)

    return Workload(call, lambda: _detection_file_loop(input_path, output_path + ".loop.json"), 1.0,
                    f"{sizes.cold_videos} videos x {sizes.cold_candidates:,} detections")


def _workload(name: str, sizes: Sizes, options: dict) -> Workload:
    if name == "fuse_proposal_lists":
        return _proposal_lists_workload(sizes)
    if name == "detect":
        return _detect_workload(sizes)
    if name == "soft_nms":
        return _soft_nms_workload(sizes)
    if name == "fuse_cli":
        return _fuse_cli_workload(sizes, options["input"], options["output"])
    raise ValueError(f"unknown workload {name!r}; choose from {WORKLOADS}")


# ---------------------------------------------------------------------- child


def _block(result):
    import jax

    return jax.block_until_ready(result)


def child_main(import_seconds: float, options: dict) -> None:
    """Run in a fresh interpreter by :func:`run_child`: time one workload and print one ``RESULT`` JSON line."""
    import dataclasses

    import jax

    from jaxfuse.bench.sizes import PRESETS

    hits: list[str] = []
    jax.monitoring.register_event_listener(
        lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
    sizes = dataclasses.replace(PRESETS[options["preset"]], **options.get("overrides", {}))
    out: dict[str, Any] = {"import_seconds": import_seconds}
    if options["workload"] != "import":
        workload = _workload(options["workload"], sizes, options)
        start = time.perf_counter()
        _block(workload.call())
        out["first_seconds"] = time.perf_counter() - start
        from jaxfuse._runtime.executable_store import store_counts

        # Programs read from disk: JAX's cache hits and whole executables from jaxfuse's store.
        out["cache_hits"] = len(hits) + store_counts()[0]
        if options.get("warm"):
            times = []
            for _ in range(options["warm"]):
                start = time.perf_counter()
                _block(workload.call())
                times.append(time.perf_counter() - start)
            out["warm_seconds"] = float(np.median(times))
        if options.get("loop") and workload.loop is not None:
            start = time.perf_counter()
            workload.loop()
            out["loop_seconds"] = (time.perf_counter() - start) * workload.loop_scale
        out["description"] = workload.description
    print("RESULT " + json.dumps(out), flush=True)


def _environment(cache: Path) -> dict[str, str]:
    """This environment with the cache in ``cache`` and jaxfuse importable from where this module is."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    environment = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR",)}
    environment.update(JAXFUSE_COMPILATION_CACHE=str(cache), PYTHONPATH=path)
    return environment


def run_child(options: dict, cache: Path, timeout: float = 900) -> dict:
    """Run :func:`child_main` in a fresh interpreter; its result, with the process's wall time."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(options)], capture_output=True, text=True,
                               env=_environment(cache), timeout=timeout)
    wall = time.perf_counter() - start
    if completed.returncode != 0 or "RESULT " not in completed.stdout:
        raise RuntimeError(f"cold-start child {options['workload']} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.split("RESULT ", 1)[1].splitlines()[0])
    result["wall_seconds"] = wall
    return result


def run_cli(arguments: Sequence[str], cache: Path, timeout: float = 900) -> float:
    """Wall seconds of ``python -m jaxfuse.cli.main ARGUMENTS`` in a fresh interpreter."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "jaxfuse.cli.main", *arguments], capture_output=True, text=True,
                               env=_environment(cache), timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"jaxfuse {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    return time.perf_counter() - start


# --------------------------------------------------------------------- parent


def measure_workload(name: str, sizes: Sizes, *, warm_rounds: int = 3, workdir: Path | None = None,
                     overrides: dict | None = None) -> dict[str, Any]:
    """One workload: first call with an empty cache, first call with a warm one, warm time and the loop.

    Returns:
        Seconds (``empty_cache``, ``warm_cache``, ``warm``, ``loop``,
        ``import_empty``, ``import_warm``), ``cache_hits`` of the warm-cache
        process and a ``description``; missing keys were not measured.
    """
    with tempfile.TemporaryDirectory(prefix="jaxfuse-cold-", dir=workdir) as scratch:
        scratch = Path(scratch)
        cache = scratch / "cache"
        options: dict[str, Any] = {"workload": name, "preset": sizes.name, "overrides": overrides or {}}
        if name == "fuse_cli":
            return _measure_cli(sizes, scratch, cache, options, warm_rounds)
        empty = run_child(options, cache)
        warm = run_child({**options, "warm": warm_rounds if name != "import" else 0, "loop": True}, cache)
    out = {"import_empty": empty["import_seconds"], "import_warm": warm["import_seconds"],
           "description": warm.get("description", "")}
    if name != "import":
        out.update(empty_cache=empty["first_seconds"], warm_cache=warm["first_seconds"],
                   warm=warm.get("warm_seconds"), loop=warm.get("loop_seconds"), cache_hits=warm["cache_hits"],
                   empty_cache_hits=empty["cache_hits"])
    return out


def _measure_cli(sizes: Sizes, scratch: Path, cache: Path, options: dict, warm_rounds: int) -> dict[str, Any]:
    from jaxfuse.bench.data import actionformer_like_candidates, write_detection_file

    source, output = scratch / "detections.json", scratch / "fused.json"
    write_detection_file(source, actionformer_like_candidates(sizes.cold_videos, sizes.cold_candidates))
    arguments = ["fuse", str(source), "-o", str(output), "--temperature", str(TEMPERATURE)]
    empty = run_cli(arguments, cache)
    warm_cli = run_cli(arguments, cache)
    warm = run_child({**options, "input": str(source), "output": str(output), "warm": warm_rounds, "loop": True},
                     cache)
    return {"empty_cache": empty, "warm_cache": warm_cli, "warm": warm.get("warm_seconds"),
            "loop": warm.get("loop_seconds"), "cache_hits": warm["cache_hits"],
            "description": warm.get("description", "") + f" ({source.stat().st_size / 1e6:.0f} MB); "
                           "first-call columns are the whole command's wall time"}


def _versus_loop(seconds: float | None, loop: float | None) -> str:
    """``seconds`` as a multiple of the loop's time (below 1x: faster than the loop)."""
    if seconds is None or not loop:
        return format_seconds(seconds) if seconds is not None else "n/a"
    return f"{format_seconds(seconds)} ({format_ratio(seconds / loop)} the loop)"


def measure_cold_start(sizes: Sizes, workloads: Sequence[str] = WORKLOADS, *, workdir: Path | None = None,
                       echo: Callable[[str], None] | None = None) -> Section:
    """Every workload in fresh processes; one row each, ratios against the plain loops."""
    section = Section("cold_start", "Cold start: first call in a fresh process, empty and warm compilation cache", (
        "What a one-shot user waits for. Each workload runs in a fresh interpreter with a new, empty compilation "
        "cache directory (*empty cache*: tracing, compilation and the run), then in another fresh interpreter "
        "that loads the programs the first one stored (*warm cache*); *warm* is the median of repeated calls in "
        "that process; the loop runs there too, on the same data. Data building and imports are not in the "
        "first-call times (the import has its own row), except for `jaxfuse fuse`, timed as the whole command."),
        ["workload", "plain loop", "first call, empty cache", "first call, warm cache", "warm", "warm speed-up",
         "cache hits"])
    for name in workloads:
        start = time.perf_counter()
        data = measure_workload(name, sizes, workdir=workdir)
        section.data[name] = data
        if name == "import":
            section.rows.append(["`import jaxfuse`", "", format_seconds(data["import_empty"]),
                                 format_seconds(data["import_warm"]), "", "", ""])
        else:
            loop = data.get("loop")
            speedup = loop / data["warm"] if loop and data.get("warm") else float("nan")
            section.rows.append([f"`{name}` ({data['description']})", format_seconds(loop) if loop else "n/a",
                                 _versus_loop(data["empty_cache"], loop), _versus_loop(data["warm_cache"], loop),
                                 format_seconds(data["warm"]) if data.get("warm") else "n/a", format_ratio(speedup),
                                 str(data.get("cache_hits", ""))])
        if echo is not None:
            echo(f"cold start {name}: {time.perf_counter() - start:.0f} s")
    section.notes += [f"{target}: {measured}, {'met' if met else '**missed**'}"
                      for target, measured, met in target_checks(section.data)]
    return section


def target_checks(data: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """Issue 9's targets against this run: ``(target, measured, met)`` for each one measured."""
    checks = []

    def check(label: str, value: float | None, target: float, smaller: bool = True, unit: str = "x") -> None:
        if value is None or not np.isfinite(value):
            return
        checks.append((f"{label} {'<=' if smaller else '>='} {target:g}{unit}", f"{value:.3g}{unit}",
                       bool(value <= target if smaller else value >= target)))

    if "import" in data:
        check("`import jaxfuse`", data["import"]["import_warm"], TARGETS["import_seconds"], unit=" s")
    if (lists := data.get("fuse_proposal_lists")) and lists.get("loop"):
        check("fuse_proposal_lists first call, empty cache, / loop", lists["empty_cache"] / lists["loop"],
              TARGETS["fuse_proposal_lists_empty_cache_vs_loop"])
        check("fuse_proposal_lists first call, warm cache, / loop", lists["warm_cache"] / lists["loop"],
              TARGETS["fuse_proposal_lists_warm_cache_vs_loop"])
        check("fuse_proposal_lists warm speed-up over the loop", lists["loop"] / lists["warm"],
              TARGETS["fuse_proposal_lists_warm_speedup"], smaller=False)
    if (soft := data.get("soft_nms")) and soft.get("loop"):
        check("Soft-NMS first call, warm cache, / loop (numpy stand-in for ActionFormer's C++)",
              soft["warm_cache"] / soft["loop"], TARGETS["soft_nms_warm_cache_vs_loop"])
        check("Soft-NMS warm speed-up over the loop", soft["loop"] / soft["warm"], TARGETS["soft_nms_warm_speedup"],
              smaller=False)
    if cli := data.get("fuse_cli"):
        check("`jaxfuse fuse` wall time, warm cache", cli["warm_cache"], TARGETS["fuse_cli_warm_cache_seconds"],
              unit=" s")
    return checks
