"""Output files on shared machines (issue 16): others' links and files, SIGKILL, full disks, pipes, closed stdout.

Files, signals and pipes are tested in real processes. Another user is
simulated by root giving a link or file to uid 12345 (``os.lchown``); those
tests are skipped for other users. Sticky world-writable directories are
made with ``chmod 1777`` inside the test's own temporary directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxfuse.formats.output import OutputError, plan_output, write_output
from jaxfuse.formats.temporary_files import STALE_SECONDS, temporary_name, temporary_pattern

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD_ENVIRONMENT = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPOSITORY}
IS_ROOT = os.geteuid() == 0
OTHER_UID = 12345
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="simulating another user's link or file needs os.lchown to another uid, which only root may do"
)
GOOD = {"label": "a", "score": 0.5, "segment": [1.0, 2.0]}


# Sets the limit, then becomes the interpreter asked for (limits survive exec): no preexec_fn, which runs
# Python between fork and exec in a parent that has JAX's threads.
LIMITED = (
    "import os, resource, sys; limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
)
LIMITED += "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"


def python(*arguments, limit_file_size: int | None = None, **options) -> subprocess.CompletedProcess:
    """A fresh interpreter (``-m jaxfuse.cli.main ...`` or ``-c code``), optionally with a file-size limit (EFBIG)."""
    limit = [] if limit_file_size is None else ["-c", LIMITED, limit_file_size]
    options.setdefault("capture_output", True)
    return subprocess.run(
        [sys.executable, *map(str, limit + list(arguments))],
        check=False,
        text=True,
        cwd=REPOSITORY,
        timeout=240,
        env=options.pop("env", CHILD_ENVIRONMENT),
        **options,
    )


def results_file(path, padding: int = 0):
    """A one-detection results file; ``padding`` characters in a top-level value that the output keeps verbatim."""
    path.write_text(json.dumps({"results": {"v": [GOOD]}, "external_data": {"padding": "x" * padding}}))
    return path


@pytest.fixture
def shared(tmp_path):
    """A sticky world-writable directory (as /tmp), owned by the running user."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory


def planted_link(directory, name, target, uid=OTHER_UID):
    link = directory / name
    link.symlink_to(target)
    os.lchown(link, uid, uid)
    return link


# ------------------------------------------------------------------ protected symlinks and files


@needs_root
def test_the_command_refuses_another_users_link_in_a_sticky_world_writable_directory(tmp_path, shared):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = planted_link(shared, "out.json", victim)
    completed = python("-m", "jaxfuse.cli.main", "fuse", results_file(tmp_path / "in.json"), "-o", link)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.splitlines()[-1] == (
        f"jaxfuse fuse: error: cannot write {link}: refusing to follow the symlink {link}: it belongs to uid "
        f"{OTHER_UID}, neither you nor the owner of its sticky world-writable directory (the kernel's "
        "protected_symlinks rule)"
    )
    assert victim.read_text() == "precious" and link.is_symlink()


@needs_root
@pytest.mark.parametrize("where", ["last component", "directory component", "second link of a chain"])
def test_another_users_link_is_refused_anywhere_on_the_path(tmp_path, shared, where):
    victim_directory = tmp_path / "private"
    victim_directory.mkdir()
    if where == "last component":
        path = planted_link(shared, "out.json", victim_directory / "out.json")
    elif where == "directory component":
        path = planted_link(shared, "dir", victim_directory) / "out.json"
    else:  # my own link, in a private directory, to another user's link in the shared one
        planted_link(shared, "next", victim_directory / "out.json")
        path = tmp_path / "mine.json"
        path.symlink_to(shared / "next")
    with pytest.raises(OutputError) as refused:
        plan_output(path)
    assert refused.value.errno == errno.EACCES and refused.value.filename == str(path)
    assert "protected_symlinks" in refused.value.strerror
    with pytest.raises(OutputError):
        write_output(path, b"new")
    assert os.listdir(victim_directory) == []


@pytest.mark.parametrize(
    "case", ["my link in a sticky directory", "the directory owner's link", "a directory without the sticky bit"]
)
def test_links_the_kernel_would_follow_are_written_through(tmp_path, case):
    if case != "my link in a sticky directory" and not IS_ROOT:
        pytest.skip("needs a link owned by another uid (root only)")
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(0o777 if case == "a directory without the sticky bit" else 0o1777)
    target = tmp_path / "target.json"
    target.write_text("old")
    link_owner = os.geteuid() if case == "my link in a sticky directory" else OTHER_UID
    if case == "the directory owner's link":
        os.chown(directory, OTHER_UID, OTHER_UID)
    link = planted_link(directory, "out.json", target, uid=link_owner)
    write_output(link, b"new")
    assert target.read_bytes() == b"new" and link.is_symlink()


@needs_root
@pytest.mark.parametrize("links", [1, 2])
def test_another_users_file_in_a_sticky_directory_is_not_written(shared, links):
    """As the kernel's protected_regular rule: neither replaced (one link) nor written in place (two)."""
    theirs = shared / "out.json"
    theirs.write_text("theirs")
    if links == 2:
        os.link(theirs, shared / "their-other-name.json")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(OutputError, match="protected_regular") as refused:
        write_output(theirs, b"mine")
    assert refused.value.filename == str(theirs)
    assert theirs.read_text() == "theirs" and theirs.stat().st_uid == OTHER_UID


@needs_root
def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path, shared):
    """A hard-linked output is written in place; an attacker who replaces it by a link between the
    check and the write must not get that write redirected."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    output = shared / "out.json"
    output.write_text("old")
    os.link(output, shared / "second-name.json")
    plan = plan_output(output)
    assert plan.mode == "in_place"
    output.unlink()
    planted_link(shared, "out.json", victim)
    with pytest.raises(OutputError, match="protected_symlinks"):
        write_output(plan, b"new")
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------ temporary files


KILLED_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    if sys.argv[2] == "named":
        del os.O_TMPFILE  # a system without unnamed temporary files
    from jaxfuse.formats.output import write_output

    real_write = os.write

    def killed_halfway(descriptor, data):
        real_write(descriptor, bytes(data[: len(data) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)

    os.write = killed_halfway
    write_output(sys.argv[1], b"new contents" * 1000)
""")


@pytest.mark.parametrize("temporary", ["unnamed", "named"])
def test_sigkill_while_writing_leaves_the_output_and_at_most_a_recognisable_temporary(tmp_path, temporary):
    output = tmp_path / "out.json"
    output.write_text("old")
    completed = python("-c", KILLED_WHILE_WRITING, output, temporary)
    assert completed.returncode == -signal.SIGKILL, completed.stderr
    assert output.read_text() == "old"
    left = sorted(set(os.listdir(tmp_path)) - {"out.json"})
    if temporary == "unnamed":  # O_TMPFILE: the kernel frees the unnamed file with the process
        assert left == []
        return
    assert len(left) == 1 and temporary_pattern("out.json").fullmatch(left[0]), left
    # The next write of the same output removes it once it is stale.
    stale = time.time() - STALE_SECONDS - 60
    os.utime(tmp_path / left[0], (stale, stale))
    write_output(output, b"newer")
    assert sorted(os.listdir(tmp_path)) == ["out.json"] and output.read_bytes() == b"newer"


def test_only_this_outputs_stale_temporaries_of_mine_are_removed(tmp_path):
    output = tmp_path / "out.json"
    stale = time.time() - STALE_SECONDS - 60

    def leftover(name, *, age=stale, owner=None, link=False):
        path = tmp_path / name
        if link:
            path.symlink_to(tmp_path / "elsewhere")
        else:
            path.write_text("partial")
        os.utime(path, (age, age), follow_symlinks=not link)
        if owner is not None:
            os.lchown(path, owner, owner)
        return name

    removed = leftover(temporary_name("out.json"))
    kept = [
        leftover(temporary_name("out.json"), age=time.time()),  # a writer at work
        leftover(temporary_name("other.json")),  # another output's
        leftover(temporary_name("out.json")[:-1]),  # not the exact pattern
        leftover(".out.json.0123456789abcdeg.jaxfuse-tmp"),  # not hexadecimal
        leftover(temporary_name("out.json"), link=True),  # a link, whatever it is called
    ]
    if IS_ROOT:
        kept.append(leftover(temporary_name("out.json"), owner=OTHER_UID))  # another user's
    write_output(output, b"new")
    assert removed not in os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["out.json"])


def test_a_long_output_name_gets_a_temporary_name_within_limits(tmp_path):
    name = "x" * 250 + ".json"
    write_output(tmp_path / name, b"new")
    assert os.listdir(tmp_path) == [name]
    assert len(temporary_name(name)) <= 255 and temporary_pattern(name).fullmatch(temporary_name(name))
    assert not temporary_pattern("y" * 250 + ".json").fullmatch(temporary_name(name))


# ------------------------------------------------------------------ full disks: every writer atomic, naming the path


def evaluate_inputs(tmp_path):
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({"results": {"v": [{"label": "Jump", "score": 0.9, "segment": [0, 10]}]}}))
    truth = tmp_path / "gt.json"
    truth.write_text(json.dumps({"database": {"v": {"annotations": [{"label": "Jump", "segment": [0, 9]}]}}}))
    return predictions, truth


BENCH_REPORT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from jaxfuse.bench.report import write_report
    from jaxfuse.bench.sizes import SMOKE
    write_report({}, SMOKE, Path(sys.argv[1]), machine="m", plots=False)
""")

STUDY_REPORT = textwrap.dedent("""
    import sys
    import numpy as np
    from jaxfuse.cli.main import main
    from jaxfuse.tools import study
    row = study.StudyRow("nms", None, np.full(7, 0.5), 0.5, 10, 0.1)
    study.run_study = lambda *args, **kwargs: [row]  # the writing is under test, not the study
    sys.exit(main(["study", "--videos", "2", "--no-sensitivity", "--methods", "nms", "--output-dir", *sys.argv[1:]]))
""")


@pytest.mark.parametrize("writer", ["evaluate --json", "bench report", "study report", "study plot"])
def test_a_full_disk_keeps_the_previous_file_and_names_it(tmp_path, writer):
    """RLIMIT_FSIZE makes a write past 100 bytes fail (EFBIG), as a full disk makes it fail (ENOSPC)."""
    limit = 100
    environment = {**CHILD_ENVIRONMENT, "JAXFUSE_COMPILATION_CACHE": "off"}
    if writer == "evaluate --json":
        previous = tmp_path / "map.json"
        predictions, truth = evaluate_inputs(tmp_path)
        arguments = ["-m", "jaxfuse.cli.main", "evaluate", predictions, truth, "--json", previous]
    elif writer == "bench report":
        previous = tmp_path / "m.md"
        arguments = ["-c", BENCH_REPORT, tmp_path]
    elif writer == "study report":
        previous = tmp_path / "study.md"
        arguments = ["-c", STUDY_REPORT, tmp_path, "--no-plot"]
    else:
        previous = tmp_path / "study.png"  # written first
        arguments = ["-c", STUDY_REPORT, tmp_path]
    previous.write_text("previous")
    completed = python(*arguments, limit_file_size=limit, env=environment)
    assert completed.returncode != 0
    assert previous.read_text() == "previous"
    assert str(previous) in completed.stderr and "File too large" in completed.stderr, completed.stderr
    assert not [name for name in os.listdir(tmp_path) if "tmp" in name]


def test_reports_refuse_another_users_link(tmp_path, shared):
    """The bench report goes through the same writer: another user's link in a shared directory is not followed."""
    if not IS_ROOT:
        pytest.skip("needs a link owned by another uid (root only)")
    from jaxfuse.bench.report import write_report
    from jaxfuse.bench.sizes import SMOKE

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted_link(shared, "m.json", victim)
    with pytest.raises(OutputError, match="protected_symlinks"):
        write_report({}, SMOKE, shared, machine="m", plots=False)
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------ standard output: broken pipes, closed


def test_a_reader_that_exits_early_gives_an_error_and_no_summary(tmp_path):
    """``jaxfuse fuse in.json -o - | head -c 10``: the output is far larger than a pipe's buffer."""
    source = results_file(tmp_path / "in.json", padding=1 << 20)
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxfuse.cli.main", "fuse", str(source), "-o", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPOSITORY,
        env=CHILD_ENVIRONMENT,
    )
    assert process.stdout.read(10) == b'{"results"'
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=240) == 2, stderr
    assert stderr.splitlines()[-1] == (
        "jaxfuse fuse: error: cannot write standard output: broken pipe: its reader exited before the end"
    )
    assert "detections of" not in stderr and "Traceback" not in stderr and "Exception" not in stderr


@pytest.mark.parametrize("command", ["fuse", "evaluate", "fuse from stdin"])
def test_a_closed_standard_stream_is_one_line(tmp_path, command):
    if command == "fuse":
        arguments, redirection, stream = ["fuse", results_file(tmp_path / "in.json"), "-o", "-"], ">&-", "output"
    elif command == "evaluate":
        arguments, redirection, stream = ["evaluate", *evaluate_inputs(tmp_path), "--json", "-"], ">&-", "output"
    else:
        arguments, redirection, stream = ["fuse", "-", "-o", tmp_path / "out.json"], "<&-", "input"
    quoted = " ".join(f"'{argument}'" for argument in arguments)
    completed = subprocess.run(
        ["bash", "-c", f"exec '{sys.executable}' -m jaxfuse.cli.main {quoted} {redirection}"],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        env=CHILD_ENVIRONMENT,
        timeout=240,
    )
    assert completed.returncode == 2, completed.stderr
    verb = "write" if stream == "output" else "read"
    assert completed.stderr.splitlines()[-1] == (
        f"jaxfuse {command.split()[0]}: error: cannot {verb} standard {stream}: standard {stream} is closed"
    )
    assert "Traceback" not in completed.stderr and not re.search(r"detections of|mAP", completed.stderr)


def test_where_an_unnamed_file_cannot_be_linked_a_named_one_is_used(tmp_path, monkeypatch):
    """A sandbox may refuse linking from /proc/self/fd: the contents are written again, under a temporary name."""

    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    output = tmp_path / "out.json"
    output.write_text("old")
    output.chmod(0o640)
    write_output(output, b"new")
    assert output.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.json"]
    assert output.stat().st_mode & 0o777 == 0o640
