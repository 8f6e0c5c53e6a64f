"""``jaxfuse fuse``: the command line over :func:`jaxfuse.fuse_detection_file` (options, presets, progress, summary, signals, exit codes).

Exit status: 0 on success; 2 for a malformed input (the message names the
video and the entry, counted from 0), an unreadable input, an unwritable
output or a bad option; 130 on Ctrl-C and 143 on SIGTERM. Nothing is
written on failure, and no temporary file is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys

from jaxfuse._core.settings import PRESETS
from jaxfuse._proposals.detection_file import DetectionFileError, fuse_detection_file
from jaxfuse._proposals.fuse_proposals import METHODS
from jaxfuse._proposals.grouping import OVERLAP_MEASURES
from jaxfuse.cli.wording import counted
from jaxfuse.formats.output import STDOUT, OutputError

PROG = "jaxfuse fuse"

PROGRESS_MIN_DETECTIONS = 100_000
"""Files with at least this many detections show a progress bar when stderr is a terminal (unless ``--quiet``)."""

INNER_SCORE_FIELD = "inner"
"""The entry field a preset with ``weights="inner"`` (the published one) reads as softmax weights."""


# ---------------------------------------------------------------------- arguments


def _number(text: str, *, low: float | None = None, high: float | None = None, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    if positive and value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, positive=True)


def _finite_float(text: str) -> float:
    return _number(text)


def _fraction(text: str) -> float:
    return _number(text, low=0.0, high=1.0)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``jaxfuse fuse`` arguments to ``parser``."""
    default = PRESETS["default"]
    parser.add_argument(
        "input", help="ActivityNet-format detection JSON ({'results': {video: [{label, score, segment}]}}); '-' for standard input"
    )
    parser.add_argument(
        "-o", "--output", required=True,
        help="where to write the fused detections (same format); '-' for standard output",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="default",
        help="named settings; the options below override single values. 'published': the paper's evaluation "
        f"rule (candidate overlap > 0.25 with the +1 frame convention, Gaussian at T = 0.2, weights from the "
        f"{INNER_SCORE_FIELD!r} field). Default 'default': the same with continuous lengths, weights = scores",
    )
    parser.add_argument("--method", choices=METHODS, default=None, help=f"fusion template, or nms / soft_nms (default {default.method})")
    parser.add_argument(
        "--temperature", type=_positive_float, default=None,
        help=f"softmax temperature (default {default.temperature}, the published evaluation's)",
    )
    parser.add_argument(
        "--overlap", choices=OVERLAP_MEASURES, default=None,
        help="grouping overlap: intersection / candidate length (published) or IoU "
        "(default: iou for nms / soft_nms, else candidate; --preset published: candidate)",
    )
    parser.add_argument(
        "--threshold", type=_fraction, default=None,
        help=f"in [0, 1]: a detection joins a leader's group when its overlap is above this (default {default.overlap_threshold})",
    )
    lengths = parser.add_mutually_exclusive_group()
    lengths.add_argument(
        "--discrete", dest="discrete", action="store_true", default=None,
        help="frame/snippet units: length = end - start + 1 (the published convention on snippet indices)",
    )
    lengths.add_argument(
        "--continuous", dest="discrete", action="store_false",
        help="seconds: length = end - start (default, as result files hold seconds)",
    )
    parser.add_argument(
        "--weight-field", metavar="NAME", default=None,
        help="use this per-detection field as the softmax weights (default: the score; --preset published: "
        f"{INNER_SCORE_FIELD!r})",
    )
    parser.add_argument("--top-k", type=_positive_int, default=None, metavar="K",
                        help="keep the K highest-scoring detections per video (default: all)")
    parser.add_argument(
        "--min-score", type=_finite_float, default=None, metavar="S",
        help="drop output detections scoring below S (default: none) and, for soft_nms, decayed ones below S "
        "(default 0.001 there)",
    )
    parser.add_argument("--sigma", type=_positive_float, default=None, help="soft_nms Gaussian decay exp(-overlap^2 / sigma) (default 0.5)")
    parser.add_argument("--decay", choices=("gaussian", "linear"), default=None, help="soft_nms decay (default gaussian)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar on stderr")
    shown.add_argument(
        "--quiet", dest="progress", action="store_false",
        help=f"print nothing but errors (default: a progress bar on a terminal for files of {PROGRESS_MIN_DETECTIONS:,}+ detections, "
        "and a one-line summary at the end)",
    )
    parser.epilog = (
        "Output: each video's detections by descending score. Exit status: 0 on success, 2 for a malformed "
        "input (the message names the video and the entry, counted from 0), an unreadable input or an "
        "unwritable output (checked before the work; for '-' also a closed standard output or a reader that exits "
        "before the end), 130 on Ctrl-C, 143 on SIGTERM; nothing is written on failure, and no temporary file is "
        "left, even after SIGKILL. A regular file is replaced atomically keeping its mode, a hard-linked one written "
        "in place, a device or FIFO directly. A symlink is written through to its target unless the kernel's "
        "protected-symlinks rule would refuse it (another user's link in a sticky world-writable directory such "
        "as /tmp), nor is another user's file there written. Compiled programs are kept between runs, with nothing "
        "to set: in $XDG_CACHE_HOME/jaxfuse/jax (else ~/.cache/jaxfuse/jax; JAXFUSE_COMPILATION_CACHE=0 turns it off, "
        "=DIR moves it), so only the first run on a machine compiles, and says so."
    )


def resolved_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`jaxfuse.fuse_detection_file`: the preset, overridden by explicit options."""
    preset = PRESETS[args.preset]
    given = lambda value, fallback: fallback if value is None else value  # noqa: E731
    method = given(args.method, preset.method)
    weight_field = args.weight_field
    if weight_field is None and preset.weights == "inner" and method not in ("nms", "soft_nms"):  # those use no weights
        weight_field = INNER_SCORE_FIELD
    return dict(
        method=method,
        temperature=given(args.temperature, preset.temperature),
        overlap=given(args.overlap, preset.overlap),
        overlap_threshold=given(args.threshold, preset.overlap_threshold),
        discrete=given(args.discrete, preset.discrete),
        weight_field=weight_field,
        sigma=args.sigma,
        decay=args.decay,
        top_k=args.top_k,
        min_score=args.min_score,
    )


# ---------------------------------------------------------------------- progress and summary


class _Progress:
    """A tqdm bar over the kernel calls and one line per phase, on stderr; the summary line at the end."""

    def __init__(self, stream, show_progress: bool | None, quiet: bool):
        self.stream = stream
        self.show_progress = show_progress
        self.quiet = quiet
        self.bar = None
        self.counts: dict = {}

    def phase(self, name: str, counts: dict) -> None:
        self.counts.update(counts)
        if name == "read" and not self.quiet:
            if self.show_progress is None:  # a bar is for a person watching: not in a log, not for small files
                interactive = getattr(self.stream, "isatty", lambda: False)()
                self.show_progress = interactive and counts["detections"] >= PROGRESS_MIN_DETECTIONS
        if name == "fuse" and self.bar is not None:
            self.bar.close()
            self.bar = None

    def batch(self, done: int, total: int) -> None:
        if not self.show_progress:
            return
        if self.bar is None:
            from tqdm import tqdm

            # Off a terminal (a log), a line every few seconds is enough.
            interval = 0.1 if getattr(self.stream, "isatty", lambda: False)() else 5.0
            self.bar = tqdm(
                total=total, desc=f"{PROG}: fusing", unit="batch", file=self.stream, leave=False, mininterval=interval
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, report) -> None:
        if self.quiet:
            return
        seconds = report.seconds
        print(
            f"{PROG}: {counted(report.detections, 'detection')} of {counted(report.videos, 'video')} "
            f"({counted(report.items, 'item')}) -> {report.fused_detections:,} in {seconds['total']:.1f} s "
            f"(read {seconds['read']:.1f} s, fuse {seconds['fuse']:.1f} s of which compile {seconds['compile']:.1f} s, "
            f"{counted(report.batches, 'batch', 'batches')}, write {seconds['write']:.1f} s)",
            file=self.stream, flush=True,
        )


# ---------------------------------------------------------------------- signals and errors


class _Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that ``finally`` blocks (temporary files) run."""


@contextlib.contextmanager
def _sigterm_raises():
    def handler(signum, frame):
        raise _Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error(text: str) -> int:
    print(f"{PROG}: error: {text}", file=sys.stderr, flush=True)
    return 2


def _os_error(error: OSError, input_path: str) -> str:
    """One line naming the file: an ``OutputError`` is the output's; any other ``OSError`` came from the input."""
    if isinstance(error, OutputError):
        verb, path, stream = "cannot write", error.filename, "standard output"
    else:
        verb, path, stream = "cannot read", input_path if error.filename is None else error.filename, "standard input"
    return f"{verb} {stream if str(path) == STDOUT else path}: {error.strerror or error}"


def _check_soft_nms_options(args: argparse.Namespace, method: str) -> None:
    """--sigma and --decay without Soft-NMS: said in the command's words before the library says it in its own."""
    given = [name for name, value in (("--sigma", args.sigma), ("--decay", args.decay)) if value is not None]
    if given and method != "soft_nms":
        raise ValueError(f"{' and '.join(given)} apply to --method soft_nms only, got --method {method}")


def run(args: argparse.Namespace) -> int:
    """Run ``jaxfuse fuse``; returns the exit status."""
    progress = _Progress(sys.stderr, args.progress, quiet=args.progress is False)
    try:
        settings = resolved_settings(args)
        _check_soft_nms_options(args, settings["method"])
        with _sigterm_raises():
            try:
                report = fuse_detection_file(
                    args.input, args.output, **settings, on_phase=progress.phase, on_batch=progress.batch
                )
            finally:
                progress.close()  # before any message: the bar's line is cleared
    except DetectionFileError as error:
        return _error(f"{args.input}: {error}")
    except OSError as error:
        return _error(_os_error(error, args.input))
    except (ValueError, TypeError) as error:  # an option the parser cannot check alone (e.g. --sigma without soft_nms)
        return _error(str(error))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except _Terminated as terminated:
        print(f"{PROG}: terminated", file=sys.stderr, flush=True)
        return int(terminated.code)
    progress.summary(report)
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience for `python -m jaxfuse.cli.fuse`
    parser = argparse.ArgumentParser(prog=PROG)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
