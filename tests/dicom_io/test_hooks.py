"""The test hooks (dicom_io.hooks): inert unless configured; hold a step in another process until released."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from dicom_io.hooks import ENV, POINTS, TIMEOUT_ENV, HookDir, checkpoint
from harness.commands import labelqa_env


def test_a_point_is_inert_without_the_variable_and_unless_armed(tmp_path, monkeypatch):
    hooks = HookDir(tmp_path, ["model-step"])
    monkeypatch.delenv(ENV, raising=False)
    checkpoint("model-step")  # returns at once, writes nothing
    monkeypatch.setenv(ENV, str(tmp_path))
    checkpoint("job-start")  # not armed: passes
    assert hooks.arrivals("model-step") == hooks.arrivals("job-start") == 0
    with pytest.raises(ValueError, match="no test hook named"):
        hooks.arm("model_step")


def test_every_point_is_named_in_the_code_it_holds(repo):
    code = "".join(p.read_text() for d in ("dicom_io", "service") for p in (repo / d).rglob("*.py"))
    for name in POINTS:
        assert code.count(f'checkpoint("{name}")') == 1, name


def test_another_process_holds_until_released_and_arrivals_are_counted(tmp_path):
    hooks = HookDir(tmp_path / "hooks", ["job-start"])
    hooks.let_pass("job-start", 1)
    script = "from dicom_io.hooks import checkpoint\nfor _ in range(2):\n    checkpoint('job-start')\nprint('done')\n"
    proc = subprocess.Popen([sys.executable, "-c", script], env=labelqa_env(**hooks.env()), stdout=subprocess.PIPE,
                            text=True)
    try:
        hooks.wait_reached("job-start", 2, timeout=60,
                           alive=lambda: None if proc.poll() is None else f"exited {proc.returncode}")
        assert proc.poll() is None, "the second arrival holds"
        assert hooks.arrivals("job-start") == 2
        hooks.release("job-start", 2)
        out, _ = proc.communicate(timeout=60)
        assert out.strip() == "done"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_threads_get_distinct_arrivals_and_release_all_lets_every_one_go(tmp_path, monkeypatch):
    hooks = HookDir(tmp_path / "hooks", ["outbox-after-send"])
    monkeypatch.setenv(ENV, str(hooks.path))
    threads = [threading.Thread(target=checkpoint, args=("outbox-after-send",)) for _ in range(4)]
    for t in threads:
        t.start()
    for k in range(1, 5):
        hooks.wait_reached("outbox-after-send", k, timeout=60)
    assert all(t.is_alive() for t in threads)
    hooks.release("outbox-after-send")
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)


def test_a_forgotten_release_times_out_and_goes_on(tmp_path, monkeypatch):
    HookDir(tmp_path, ["store-before-fsync"])
    monkeypatch.setenv(ENV, str(tmp_path))
    monkeypatch.setenv(TIMEOUT_ENV, "0.05")
    checkpoint("store-before-fsync")
    assert (tmp_path / "store-before-fsync.1.reached").is_file()


def test_waiting_for_a_process_that_died_says_so(tmp_path):
    hooks = HookDir(tmp_path)
    with pytest.raises(AssertionError, match="it exited"):
        hooks.wait_reached("model-step", 1, timeout=60, alive=lambda: "it exited")

