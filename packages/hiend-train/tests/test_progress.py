"""What a run shows of itself (hiend_train.progress): the ETA, the running means."""

from __future__ import annotations

import pytest
import torch

from hiend_train import checkpointing, progress
from hiend_train.config import TrainConfig


def test_run_eta_counts_the_whole_run(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    eta = progress.RunEta(remaining=10)
    assert eta.text() == "run ETA -:--:--"
    now[0] += 8.0
    eta.advance()
    eta.advance()  # 4 s per micro-batch, 8 left
    assert eta.seconds() == pytest.approx(32.0) and eta.text() == "run ETA 0:00:32"
    assert progress.format_duration(3 * 3600 + 5 * 60 + 7) == "3:05:07"
    assert progress.format_duration(50 * 3600) == "50:00:00"
    columns = [getattr(c, "text_format", "") for c in progress.progress_bar(False).columns]
    assert "{task.fields[eta]}" in columns


def test_eta_of_a_run_covers_its_epochs_and_stop():
    cfg = TrainConfig(epochs=5, grad_accum=2)
    assert progress.remaining(cfg, checkpointing.ResumePoint(), 5, 6) == 30
    assert progress.remaining(cfg, checkpointing.ResumePoint(epoch=1, batch=2, step=4), 5, 6) == 22
    stopped = cfg.model_copy(update={"stop_after_steps": 7})
    assert progress.remaining(stopped, checkpointing.ResumePoint(epoch=1, batch=2, step=4), 5, 6) == 6


def test_running_means_stop_a_non_finite_loss_and_travel_through_state_pt(tmp_path):
    means = progress.RunningMeans(None, torch.device("cpu"))
    means.names = ["loss", "dice"]
    means.add(progress.step_stats(torch.tensor(2.0), {"dice": torch.tensor(0.5)}), torch.tensor(3.0), 4)
    means.add(progress.step_stats(torch.tensor(4.0), {"dice": 0.25}), None, 4)
    where = progress.Where(epoch=0, step=1, lr=1e-3, root=tmp_path)
    assert means.means(means.epoch, where) == {"loss": 3.0, "dice": 0.375, "grad_norm": 3.0}
    again = progress.RunningMeans(means.state(), torch.device("cpu"))  # as a resumed epoch has them
    assert again.means(again.epoch, where) == means.means(means.epoch, where)
    line = means.step_line(where)
    assert line["loss"] == 3.0 and line["crops_per_s"] > 0 and means.window.sums is None  # a new window
    means.add(progress.step_stats(torch.tensor(float("nan")), {"dice": 0.0}), None, 4)
    with pytest.raises(
        progress.NonFiniteLoss, match=rf"non-finite loss \(nan\) at epoch 1 by step 1 .*{tmp_path}"
    ):
        means.means(means.epoch, where)
