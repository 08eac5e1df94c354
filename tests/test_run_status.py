"""metrics.json's ``status`` for a run that ends early: stopped on purpose (and in which round) or failed."""

import pytest

from fedgma.outputs import RunRecorder
from fedgma.settings import Settings


@pytest.mark.parametrize("problem, status", [
    (SystemExit(0), "stopped: by the operator during round 2"),  # Flower's handler of SIGTERM / SIGINT
    (KeyboardInterrupt(), "stopped: by the operator during round 2"),  # Ctrl-C outside Flower's handler
    (SystemExit(1), "failed: SystemExit: 1"),  # Flower's exit on an error
    (ValueError("bad reply"), "failed: ValueError: bad reply"),
])
def test_a_stop_on_purpose_is_not_a_failure_and_names_its_round(tmp_path, problem, status):
    recorder = RunRecorder(tmp_path / "out", Settings())
    for finished in (0, 1):
        recorder.record_round({"round": finished, "ood-accuracy": 0.5})
    assert recorder.end_status(problem) == status
    assert RunRecorder(tmp_path / "fresh", Settings()).end_status(SystemExit(0)) == (
        "stopped: by the operator during round 0")  # before the initial evaluation was recorded
