"""``jaxfuse bench``: run the chosen sections in order, print each table, write the report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from jaxfuse._runtime.compilation_cache import persistent_cache_disabled
from jaxfuse.bench.cold_start import measure_cold_start
from jaxfuse.bench.compilation import measure_compile
from jaxfuse.bench.floors import measure_floors
from jaxfuse.bench.machine import machine_name, memory_budget_bytes
from jaxfuse.bench.pipeline import measure_pipeline
from jaxfuse.bench.ragged import measure_ragged
from jaxfuse.bench.report import headline, write_report
from jaxfuse.bench.section import Section, render_section
from jaxfuse.bench.sizes import FULL, QUICK, SECTIONS, SMOKE, Sizes
from jaxfuse.bench.student_t import measure_student_t
from jaxfuse.bench.templates import measure_group_sweep, measure_member_sweep, measure_templates
from jaxfuse.formats.output import OutputError
from jaxfuse.tools.report_files import (
    DEFAULT_REPORT_DIR_TEXT,
    Requirement,
    missing_requirements_message,
    report_directory,
)


def run_benchmarks(sizes: Sizes, sections: Sequence[str] = SECTIONS, *, memory_gb: float | None = None,
                   echo: Callable[[str], None] | None = None,
                   on_section: Callable[[dict[str, Section]], None] | None = None) -> dict[str, Section]:
    """Run the chosen measurements in order; each finished section is echoed as markdown.

    ``on_section`` gets the sections done so far after each one (to save a
    partial report, in case a time limit cuts the run short).
    """
    echo = echo or (lambda text: print(text, flush=True))
    memory_budget = memory_budget_bytes(sizes.memory_gb if memory_gb is None else memory_gb)
    done: dict[str, Section] = {}
    if "cold_start" in sections:
        done["cold_start"] = measure_cold_start(sizes, echo=echo)
        echo(render_section(done["cold_start"]) + "\n")
        if on_section is not None:
            on_section(done)
    floors = {}
    if any(s in sections for s in ("floors", "templates", "groups", "members")):
        done["floors"] = measure_floors(sizes)
        floors = done["floors"].data
    steps = {
        "templates": lambda: measure_templates(sizes, floors),
        "groups": lambda: measure_group_sweep(sizes, floors, memory_budget),
        "members": lambda: measure_member_sweep(sizes, floors),
        "ragged": lambda: measure_ragged(sizes),
        "student_t": lambda: measure_student_t(sizes),
        "compile": lambda: measure_compile(sizes),
        "pipeline": lambda: measure_pipeline(sizes),
    }
    if "floors" in done:
        echo(render_section(done["floors"]) + "\n")
    for key, measure in steps.items():
        if key in sections:
            start = time.perf_counter()
            done[key] = measure()
            echo(render_section(done[key]) + f"\n\n({key}: {time.perf_counter() - start:.0f} s)\n")
            if on_section is not None:
                on_section(done)
    return done


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``jaxfuse bench``."""
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--full", action="store_true",
                        help="full sizes (G up to 10^7 where memory allows, more repeats); quick by default")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes: checks the machinery in seconds")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help=f"where the report, its JSON copy and the plots go (default {DEFAULT_REPORT_DIR_TEXT})")
    parser.add_argument("--machine", default=None, help="report name (default: GPU name or cpu-<model>-<n>cores)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="cap on one measurement's memory (default 4 quick, 8 full; at most half of what is free)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks, print each table, write the report. Non-zero if jaxfuse disagreed with a baseline."""
    sizes = SMOKE if args.smoke else FULL if args.full else QUICK
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        print(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    # Before any work: a missing optional dependency is one line, not a traceback after minutes of measuring.
    needs = [] if args.no_plots else [Requirement("matplotlib", "the plots", "--no-plots")]
    if "student_t" in chosen:
        needs.append(Requirement("scipy", "the student_t baseline", "--sections without student_t"))
    if message := missing_requirements_message("jaxfuse bench", needs, "bench"):
        print(message, file=sys.stderr)
        return 2
    output_dir = report_directory(args.output_dir)
    device = jax.devices()[0]
    print(f"jaxfuse bench ({sizes.name}) on {device.platform}: {device.device_kind}, {machine_name()}\n")
    start = time.perf_counter()
    command = "jaxfuse bench" + {"full": " --full", "smoke": " --smoke", "quick": ""}[sizes.name]

    def save_partial(done: dict[str, Section]) -> None:
        write_report(done, sizes, output_dir, machine=args.machine, plots=False,
                     command=command + " (partial)")

    try:
        # Every first call measured here compiles, as on a new machine: no programs from the user's disk cache.
        with persistent_cache_disabled():
            sections = run_benchmarks(sizes, chosen, memory_gb=args.memory_gb, on_section=save_partial)
        report = write_report(sections, sizes, output_dir, machine=args.machine, plots=not args.no_plots,
                              command=command)
    except OutputError as error:
        print(f"jaxfuse bench: error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    print(render_section(headline(sections, sizes)))
    print(f"\nreport: {report} ({time.perf_counter() - start:.0f} s)")
    return 0 if all_agree(sections) else 1


def all_agree(sections: dict[str, Section]) -> bool:
    """Whether every correctness check against a baseline passed."""
    ok = True
    if "templates" in sections:
        ok &= all(d["max_difference"] < 1e-4 and d["failed_groups"] == 0
                  for d in sections["templates"].data.values() if isinstance(d, dict) and "max_difference" in d)
    if "pipeline" in sections:
        ok &= bool(sections["pipeline"].data["matches"])
    return ok
