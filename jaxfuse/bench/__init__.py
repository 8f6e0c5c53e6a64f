"""The benchmark harness behind ``jaxfuse bench`` and ``benchmarks/``: jaxfuse against what users run today.

Not a kernel: nothing in :mod:`jaxfuse` imports it. One module per part, each
importing only the ones above it in this list, so the graph stays acyclic:

* :mod:`~jaxfuse.bench.sizes`: presets (quick, full, smoke), constants, targets;
* :mod:`~jaxfuse.bench.timing`, :mod:`~jaxfuse.bench.section`,
  :mod:`~jaxfuse.bench.machine`: timing, report tables, the machine's name;
* :mod:`~jaxfuse.bench.published`, :mod:`~jaxfuse.bench.data`,
  :mod:`~jaxfuse.bench.baselines`: the published loops, seeded inputs, baselines;
* one module per report section: :mod:`~jaxfuse.bench.floors`,
  :mod:`~jaxfuse.bench.templates` (also the G and M sweeps),
  :mod:`~jaxfuse.bench.ragged`, :mod:`~jaxfuse.bench.student_t`,
  :mod:`~jaxfuse.bench.compilation`, :mod:`~jaxfuse.bench.pipeline`,
  :mod:`~jaxfuse.bench.cold_start` (fresh processes, empty and warm
  compilation cache);
* :mod:`~jaxfuse.bench.report` (headline, markdown, JSON, plots) and
  :mod:`~jaxfuse.bench.command` (the ``jaxfuse bench`` command).

Every measurement runs in one process, baselines side by side with jaxfuse, so
the ratios hold even on a busy machine whose absolute timings wander. Timings are
medians of several calls after a warm-up call (compilation is never timed, except
where first-call latency is the measurement), and every timed JAX call ends with
``jax.block_until_ready``. The report goes to ``<machine>.md`` in ``--output-dir``
(default: the per-user directory of :mod:`jaxfuse.tools.report_files`) with a JSON
copy of the numbers and PNG plots.
"""
