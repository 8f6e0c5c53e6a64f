"""The pseudo-label training example runs end to end at a small size."""

from __future__ import annotations

import numpy as np

from jaxfuse.examples import pseudo_label_training


def test_pseudo_label_training_example_runs_and_compiles_once(capsys):
    report = pseudo_label_training.main(["--steps", "3", "--videos", "2", "--max-length", "120", "--classes", "3"])
    assert len(report["losses"]) == 3 and np.isfinite(report["losses"]).all()
    assert report["compiled_steps"] == 1  # the temperature schedule does not recompile
    assert "SUCCESSFUL" in capsys.readouterr().out
