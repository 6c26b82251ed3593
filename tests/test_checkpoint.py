"""Checkpoint files: atomic writes, weights_only reads that refuse pickled objects, params hash, final weights."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from yolov1.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    load_weights,
    params_hash,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from yolov1.config import LossConfig, ModelConfig

UNPICKLED: list[str] = []


def _record(message: str) -> str:
    UNPICKLED.append(message)
    return message


class Payload:
    """A custom object whose unpickling has a side effect (stands in for `os.system`)."""

    def __reduce__(self):
        return (_record, ("code ran while loading",))


def test_round_trip_of_plain_state(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "lr": 0.01, "name": "x",
             "flags": [True, None], "pair": (1, 2), "rng": get_rng_state()}
    path = save_checkpoint(tmp_path / "sub" / "last.pt", state)  # creates the directory
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert (loaded["epoch"], loaded["lr"], loaded["name"], loaded["flags"]) == (3, 0.01, "x", [True, None])
    assert tuple(loaded["pair"]) == (1, 2)
    assert os.listdir(tmp_path / "sub") == ["last.pt"]  # no temp file left behind


def test_pickled_object_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)  # what a hostile or foreign file could hold
    UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="evil.pt.*weights_only"):
        load_checkpoint(path)
    assert UNPICKLED == []  # weights_only refused the global: the side effect never happened
    torch.load(path, weights_only=False)  # control: a full unpickle WOULD run it
    assert UNPICKLED == ["code ran while loading"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable lambda
        save_checkpoint(path, {"step": 2, "bad": lambda: None})
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_missing_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such"):
        load_checkpoint(tmp_path / "nope.pt")
    path = save_checkpoint(tmp_path / "cut.pt", {"w": torch.zeros(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        load_checkpoint(empty)


def test_params_hash_is_canonical():
    loss = LossConfig(lambda_coord=5.0, lambda_noobj=0.5, confidence_target="iou")
    h = params_hash(loss, {"b": 1, "a": (1, 2)})
    assert h == params_hash(loss, {"a": [1, 2], "b": 1})  # key order and tuple/list do not matter
    assert len(h) == 64 and int(h, 16) >= 0
    assert h != params_hash(dataclasses.replace(loss, lambda_noobj=0.25), {"a": [1, 2], "b": 1})
    assert h != params_hash({"b": 1, "a": (1, 2)}, loss)  # argument order does
    # the canonical text is sorted-key compact JSON: this is its sha256, worked out independently
    import hashlib
    assert params_hash({"y": 1, "x": [0.5]}) == hashlib.sha256(b'[{"x":[0.5],"y":1}]').hexdigest()
    with pytest.raises(TypeError, match="Tensor"):
        params_hash({"w": torch.zeros(1)})


def test_rng_state_restores_the_stream():
    state = get_rng_state("cpu")
    first = torch.rand(5)
    torch.rand(3)
    set_rng_state(state, "cpu")
    assert torch.equal(torch.rand(5), first)


TINY = ModelConfig(variant="fast", input_size=64, grid_size=2, boxes_per_cell=2, num_classes=3, batch_norm=True,
                   width_multiplier=0.125, head="conv", head_hidden=16, dropout=0.5)


def test_weights_round_trip_rebuilds_the_same_net(tmp_path):
    from yolov1.model import build_model

    model = build_model(TINY).eval()
    with torch.no_grad():  # make the BN buffers non-trivial too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    path = save_weights(tmp_path / "yolov1.pt", model, TINY, ["a", "b", "c"], {"epochs": 3, "map": 0.5})
    assert torch.load(path, weights_only=True)["epochs"] == 3
    net, cfg, classes = load_weights(path, device="cpu")
    assert cfg == TINY and classes == ["a", "b", "c"] and not net.training
    for k, v in model.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))


def test_weights_bad_inputs(tmp_path):
    from yolov1.model import build_model

    model = build_model(TINY)
    with pytest.raises(ValueError, match="classes"):
        save_weights(tmp_path / "w.pt", model, TINY, ["a"], {})
    with pytest.raises(ValueError, match="reserved"):
        save_weights(tmp_path / "w.pt", model, TINY, ["a", "b", "c"], {"classes": []})
    save_checkpoint(tmp_path / "ckpt.pt", {"model": {}})
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_weights(tmp_path / "ckpt.pt")
    wrong = dataclasses.replace(TINY, num_classes=4)
    save_checkpoint(tmp_path / "mismatch.pt", {"state_dict": model.state_dict(),
                                               "model_config": dataclasses.asdict(wrong),
                                               "classes": ["a", "b", "c", "d"]})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(tmp_path / "mismatch.pt")


def test_disk_full_says_so_names_the_file_and_leaves_no_torn_file(tmp_path, monkeypatch):
    import errno

    from yolov1 import checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(4)})
    before = path.read_bytes()
    real_write, budget = checkpoint._write, [3000]  # the disk takes 3000 more bytes, then it is full

    def full_disk(fd, data):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(memoryview(data).cast("B")[:budget[0]]))
        budget[0] -= n
        return n

    monkeypatch.setattr(checkpoint, "_write", full_disk)
    with pytest.raises(CheckpointError, match=r"last.pt: no space left on device") as err:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(100_000)})
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before  # the previous checkpoint, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the partial temp file is gone


def test_other_write_errors_pass_through_unchanged(tmp_path, monkeypatch):
    import errno

    from yolov1 import checkpoint

    def broken(fd, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint, "_write", broken)
    with pytest.raises(Exception) as err:  # noqa: PT011  (torch wraps it; the point is: not "no space")
        save_checkpoint(tmp_path / "x.pt", {"w": torch.ones(3)})
    assert "no space left" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_snapshot_copies_tensors_so_later_in_place_changes_do_not_leak():
    from yolov1.checkpoint import snapshot

    w = torch.ones(3)
    state = {"model": {"w": w}, "rng": [{"torch": torch.arange(2)}], "step": 3, "names": ("a", "b")}
    copy = snapshot(state)
    w.add_(1)  # training goes on changing the live tensor
    assert copy["model"]["w"].tolist() == [1.0, 1.0, 1.0] and copy["step"] == 3 and copy["names"] == ("a", "b")
    assert copy["model"]["w"].data_ptr() != w.data_ptr()


def test_async_writer_writes_in_order_and_reports_errors_at_the_next_call(tmp_path, monkeypatch):
    from yolov1 import checkpoint

    writer = checkpoint.AsyncCheckpointWriter()
    for step in range(1, 4):  # each submit waits for the previous write: the last one wins
        writer.submit(tmp_path / "last.pt", {"step": step})
    writer.wait()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3 and not writer.pending

    def fail(path, state):
        raise CheckpointError(f"{path}: no space left on device")

    monkeypatch.setattr(checkpoint, "save_checkpoint", fail)
    writer.submit(tmp_path / "last.pt", {"step": 4})  # fails in the background ...
    with pytest.raises(CheckpointError, match="no space left on device"):
        writer.wait()  # ... and is raised to the training thread here
    writer.wait()  # reported once
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    from yolov1.checkpoint import remove_stale_temp_files

    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / ".best.pt.x.tmp").write_bytes(b"other file's")
    (tmp_path / "last.pt").write_bytes(b"kept")
    assert remove_stale_temp_files(tmp_path / "last.pt") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.x.tmp", "last.pt"]
    assert remove_stale_temp_files(tmp_path / "missing" / "last.pt") == 0
