"""``jaxfuse bench`` machinery on tiny sizes: it measures, prints, and writes a complete report."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import pytest

from jaxfuse.bench import command
from jaxfuse.bench.sizes import CLOSED_FORMS

# The closed-form sections and the compile stream compile in seconds; Student-t
# and the CAS pipeline compile bigger programs and are covered by the benchmark
# suite itself, which keeps this test well under 20 s.
SMOKE_SECTIONS = ("floors", "templates", "groups", "members", "ragged", "compile")


def _numbers(tree):
    """Every number in a nested JSON payload."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(["--smoke", "--output-dir", str(output), "--machine", "test-machine",
                              "--sections", ",".join(SMOKE_SECTIONS)])
    status = command.run(args)
    return status, output


def test_bench_command_writes_every_section(smoke_report):
    status, output = smoke_report
    assert status == 0  # jaxfuse agreed with every baseline
    report = (output / "test-machine.md").read_text()
    for heading in ("# jaxfuse benchmarks: test-machine", "## Headline targets", "## Floors of this device",
                    "## Closed-form kernels at G x M x K", "## Gaussian throughput against G",
                    "## Gaussian throughput against M", "## Skewed ragged groups", "## Compile count"):
        assert heading in report, heading
    for field in ("- Versions: jaxfuse", "jax ", "jaxlib ", "numpy ", "- Date: ", "- Machine: "):
        assert field in report, field


def test_bench_command_numbers_are_positive_and_finite(smoke_report):
    _, output = smoke_report
    payload = json.loads((output / "test-machine.json").read_text())
    data = payload["sections"]
    assert data["floors"]["data"]["copy_gbps"] > 0 and data["floors"]["data"]["exp_per_second"] > 0
    for template in CLOSED_FORMS:
        measured = data["templates"]["data"][template]
        for key in ("jax_seconds", "host_seconds", "numpy_seconds", "speedup", "gbps", "floor_fraction"):
            assert math.isfinite(measured[key]) and measured[key] > 0, (template, key, measured[key])
    for point in data["groups"]["data"]["points"] + data["members"]["data"]["points"]:
        assert all(math.isfinite(point[key]) and point[key] > 0 for key in ("jax_seconds", "numpy_seconds", "gbps"))
    for policy in data["compile"]["data"].values():
        assert policy["compiles"] >= 1 and policy["first_call_seconds"] > 0
    assert all(math.isfinite(number) for number in _numbers(data))


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib")
def test_bench_command_plots_are_small_pngs(smoke_report):
    _, output = smoke_report
    plots = sorted(output.glob("test-machine-*.png"))
    assert {p.name.removeprefix("test-machine-") for p in plots} >= {
        "throughput-vs-groups.png", "throughput-vs-members.png", "speedup.png", "floor-fraction.png"}
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size < 200_000
    assert all(f"]({plot.name})" in (output / "test-machine.md").read_text() for plot in plots)


def test_cold_start_harness_times_a_fresh_import(tmp_path):
    from jaxfuse.bench.cold_start import measure_cold_start
    from jaxfuse.bench.sizes import SMOKE

    section = measure_cold_start(SMOKE, ["import"], workdir=tmp_path)
    data = section.data["import"]
    assert 0 < data["import_empty"] < 60 and 0 < data["import_warm"] < 60
    assert section.rows[0][0] == "`import jaxfuse`" and section.rows[0][2].endswith("s")  # "1.2 s" or "950 ms"
    assert any(note.startswith("`import jaxfuse` <= 1.5 s") for note in section.notes)
    assert list(tmp_path.iterdir()) == []  # its cache directories are gone
