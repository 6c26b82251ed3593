"""The train stage's per-epoch progress bar: drawn on a terminal, silent in logs (Prefect, CI, files)."""

from __future__ import annotations

import io

from pipelines.train import EpochProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(progress: EpochProgress, steps_per_epoch: int = 4, epochs: int = 2, log_every: int = 2) -> None:
    for step in range(1, steps_per_epoch * epochs + 1):
        if step % log_every == 0:  # as yolov1.train calls on_step: "epoch" = step / steps_per_epoch
            progress.on_step(step, {"loss": 1.0 / step, "epoch": step / steps_per_epoch})
        if step % steps_per_epoch == 0:
            progress.on_epoch_end(step // steps_per_epoch, {})


def test_a_terminal_gets_one_bar_per_epoch_with_steps_and_eta():
    tty = _Terminal()
    progress = EpochProgress(epochs=2, stream=tty)
    _feed(progress)
    text = tty.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "epoch 3/2" not in text
    assert "4/4" in text  # each bar reaches the epoch's last step
    assert "<" in text  # tqdm's "elapsed<remaining": the ETA
    assert "step/s" in text or "s/step" in text
    assert "loss=0.125" in text  # the last step's loss (1/8)
    assert progress.bar is None  # closed at the end of each epoch


def test_a_pipe_or_file_gets_nothing():
    pipe = io.StringIO()  # isatty() is False, as under DVC in a Prefect task
    progress = EpochProgress(epochs=2, stream=pipe)
    _feed(progress)
    assert pipe.getvalue() == "" and progress.bar is None
