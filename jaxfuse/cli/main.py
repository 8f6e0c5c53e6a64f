"""The ``jaxfuse`` console command.

Each subcommand lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; they are imported only when used, so ``jaxfuse --help``
stays fast. The first run on a machine says on stderr that it compiles (see
:mod:`jaxfuse._runtime.compilation_cache`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from jaxfuse._core.version import VERSION

_SUBCOMMANDS = {
    "demo": ("jaxfuse.tools.demo", "fuse a built-in THUMOS-like set of groups with every template, checked against numpy"),
    "fuse": ("jaxfuse.cli.fuse", "fuse detections of an ActivityNet-format JSON file"),
    "bench": ("jaxfuse.bench.command", "run the benchmark suite and write a report"),
    "study": ("jaxfuse.tools.study", "compare templates, NMS and Soft-NMS by detection mAP on synthetic videos"),
    "evaluate": ("jaxfuse.cli.evaluate", "detection mAP of a results file against its ground truth, as papers print it"),
    "plot": ("jaxfuse.cli.plot", "draw one video's timeline per class: ground truth, raw and fused detections (PNG)"),
}

# Commands that time compilation without the persistent cache (bench) or compile nothing (plot):
# no first-compilation notice, and no record that this machine has compiled.
_MEASURES_COMPILATION = frozenset({"bench", "plot"})


def _available_subcommands():
    for name, (module, help_text) in _SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            yield name, module, help_text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="jaxfuse", description="JAX-accelerated instance fusion for temporal action localization.")
    parser.add_argument("--version", action="version", version=f"jaxfuse {VERSION}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module, help_text in _available_subcommands():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported, for its arguments too.
        if argv and argv[0] == name:
            modules[name] = importlib.import_module(module)
            modules[name].configure(subparser)
    args = parser.parse_args(argv)
    if args.command in _MEASURES_COMPILATION:
        return int(modules[args.command].run(args) or 0)
    from jaxfuse._runtime import compilation_cache

    compilation_cache.announce_first_compilation(sys.stderr)
    status = int(modules[args.command].run(args) or 0)
    compilation_cache.mark_compiled()
    return status


def _standard_descriptors_opened() -> None:
    """Open /dev/null on a standard descriptor the caller closed (``>&-``).

    Otherwise the next file opened takes its number, and whatever writes to
    it (a C library's message to descriptor 1) lands in that file, perhaps the
    output. ``sys.stdout`` stays None, so ``-o -`` still says standard output
    is closed.
    """
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != descriptor:
                os.dup2(null, descriptor)
                os.close(null)


def console_main() -> None:
    """The console script: :func:`main`, then exit with its status.

    After Ctrl-C (130) or SIGTERM (143) the process ends without interpreter
    teardown: an interrupted XLA compile may still be running on its own
    threads, and tearing the runtime down under them segfaults. The
    subcommand has already cleaned up and said so in one line.
    """
    _standard_descriptors_opened()
    try:
        status = main()
    except KeyboardInterrupt:  # before a subcommand took over (while importing JAX, say)
        print("jaxfuse: interrupted", file=sys.stderr)
        status = 130
    if status in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    console_main()
