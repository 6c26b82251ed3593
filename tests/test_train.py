"""The training loop on a tiny stand-in net (tests/ddp_worker.py): callbacks, schedule, checkpoints, exact resume
after SIGTERM and after a real SIGKILL, the params-hash guard, the non-finite-loss guard and DDP on CPU."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import MODEL_CFG, NoisyDataset, TinyNet, train_config

from tests.server_process import free_port
from yolov1.checkpoint import load_checkpoint
from yolov1.schedule import lr_at
from yolov1.train import (
    NonFiniteLossError,
    ResumeError,
    TrainingInterrupted,
    build_optimizer,
    train,
)

WORKER = Path(__file__).with_name("ddp_worker.py")


class Recorder:
    def __init__(self, on_step=None) -> None:
        self.steps: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict]] = []
        self._on_step = on_step

    def on_step(self, step, metrics):
        self.steps.append((step, metrics))
        if self._on_step:
            self._on_step(step)

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))


def _run(tmp, cfg=None, **kw):
    kw.setdefault("build_fn", TinyNet)
    return train(MODEL_CFG, cfg or train_config(), kw.pop("dataset", NoisyDataset()), checkpoint_dir=tmp, **kw)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The worker subprocesses run single-threaded; CPU kernels can sum in another order with more threads, so
    the in-process runs they are compared with bit for bit do too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run: the final state_dict that every resumed run must reproduce bit for bit."""
    result = _run(tmp_path_factory.mktemp("ref"))
    return {k: v.clone() for k, v in result.model.state_dict().items()}, result


def test_callbacks_metrics_and_schedule(tmp_path):
    rec = Recorder()
    cfg = train_config()
    result = _run(tmp_path, callbacks=rec)
    # 16 images / batch 4 = 4 steps per epoch, 3 epochs; log_every 1 -> on_step at every step
    assert [s for s, _ in rec.steps] == list(range(1, 13))
    assert [e for e, _ in rec.epochs] == [1, 2, 3]
    assert (result.steps, result.epochs, result.resumed_from_step) == (12, 3, 0)
    # the lr reported at step k is the one step k ran with: lr_at(k - 1) (warm-up 3 steps, x0.1 at 6 and 9)
    assert [m["lr"] for _, m in rec.steps] == pytest.approx([lr_at(k - 1, 12, cfg) for k in range(1, 13)])
    for _, m in rec.steps:
        assert m["loss"] == pytest.approx(m["loss_coord"] + m["loss_obj"] + m["loss_noobj"] + m["loss_class"])
        assert m["images_per_s"] > 0 and m["grad_norm"] > 0
    # epoch loss = mean of that epoch's step losses
    for epoch, m in rec.epochs:
        steps = [s["loss"] for k, s in rec.steps if (k - 1) // 4 == epoch - 1]
        assert m["loss"] == pytest.approx(sum(steps) / 4)
    assert rec.epochs[-1][1]["loss"] < rec.epochs[0][1]["loss"]  # it learns something
    assert result.final_loss == rec.epochs[-1][1]["loss"]
    ckpt = load_checkpoint(tmp_path / "last.pt")  # weights_only: plain data only
    assert (ckpt["global_step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (12, 3, 0)
    assert ckpt["params_hash"] == result.params_hash and ckpt["model_config"]["grid_size"] == 2
    _assert_same_weights(ckpt["model"], result.model.state_dict())


def test_weight_decay_skips_biases_and_batch_norm():
    model = TinyNet(MODEL_CFG)
    decay, no_decay = build_optimizer(model, train_config()).param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv1.weight", "conv2.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["conv2.bias", "norm.bias", "norm.weight"]
    adamw = build_optimizer(model, train_config(optimizer="adamw"))
    assert isinstance(adamw, torch.optim.AdamW)


def test_sigterm_saves_at_the_next_step_and_resume_is_exact(tmp_path, reference):
    before = signal.getsignal(signal.SIGTERM)
    rec = Recorder(on_step=lambda step: step == 5 and os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted, match="after step 6; checkpoint saved to .*last.pt.*train.resume: auto") as err:
        _run(tmp_path, callbacks=rec)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    # the flag set during step 5's callback is acted on at the next boundary: step 6, mid-epoch 2
    assert err.value.step == 6
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["global_step"], ckpt["epoch"], ckpt["step_in_epoch"]) == (6, 1, 2)

    rec2 = Recorder()
    result = _run(tmp_path, callbacks=rec2)
    assert result.resumed_from_step == 6 and [s for s, _ in rec2.steps] == list(range(7, 13))
    _assert_same_weights(result.model.state_dict(), reference[0])  # dropout, noise and order all restored
    assert result.final_metrics["loss"] == reference[1].final_metrics["loss"]


def test_resume_of_a_finished_run_does_nothing(tmp_path, reference):
    _run(tmp_path)
    rec = Recorder()
    again = _run(tmp_path, callbacks=rec)
    assert (again.steps, again.resumed_from_step, rec.steps) == (12, 12, [])
    _assert_same_weights(again.model.state_dict(), reference[0])
    assert again.final_metrics["loss"] == reference[1].final_metrics["loss"]  # kept in the checkpoint


def test_resume_with_other_params_is_refused(tmp_path):
    _run(tmp_path, train_config(epochs=1))
    with pytest.raises(ResumeError, match=r"last.pt was written with different params .*train.resume: never"):
        _run(tmp_path, train_config(epochs=1, lr=0.02))
    # bookkeeping keys do not count: another log_every / num_workers still resumes
    same = _run(tmp_path, train_config(epochs=1, log_every=3, val_every=7))
    assert same.resumed_from_step == 4
    fresh = _run(tmp_path, train_config(epochs=1, lr=0.02, resume="never"))
    assert fresh.resumed_from_step == 0
    assert load_checkpoint(tmp_path / "last.pt")["params_hash"] == fresh.params_hash  # overwritten


class _NaNAfter(TinyNet):
    """The stand-in net, whose output turns to NaN from its `bad_call`-th forward pass on."""

    bad_call = 6

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        out = super().forward(images)
        return out * float("nan") if self.calls >= self.bad_call else out


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    rec = Recorder()
    # log_every 3: the bad step 6 (epoch 2) is found at the step-6 check, before any later checkpoint
    with pytest.raises(NonFiniteLossError, match=r"step 6 \(epoch 2\).*total=nan.*left untouched") as err:
        _run(tmp_path, train_config(log_every=3), callbacks=rec, build_fn=_NaNAfter)
    assert (err.value.step, err.value.epoch) == (6, 2)
    assert set(err.value.components) == {"total", "coord", "obj", "noobj", "class", "grad_norm"}
    assert [s for s, _ in rec.steps] == [3]  # step 6's metrics never reached the callback
    # epoch 1's checkpoint (written in the background, and waited for before the error was raised)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["global_step"], ckpt["epoch"]) == (4, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file, no best.pt


def test_inf_target_is_caught_too(tmp_path):
    data = NoisyDataset()
    data.targets[:, 0, 0, 2] = float("inf")  # w = inf in every image: the very first loss is inf
    with pytest.raises(NonFiniteLossError, match="step 1 .*no checkpoint was written"):
        _run(tmp_path, dataset=data)
    assert not (tmp_path / "last.pt").exists()


def test_validation_schedule_and_it_does_not_disturb_training(tmp_path, reference):
    calls = []

    def val_fn(model, epoch):
        assert not model.training
        torch.rand(100)  # an evaluator that draws from the RNG must not shift the training stream
        calls.append(epoch)
        return {"map": epoch / 10}

    rec = Recorder()
    result = _run(tmp_path, train_config(val_every=2), callbacks=rec, val_fn=val_fn)
    assert calls == [2, 3]  # every val_every epochs, and after the last one
    assert [m.get("val_map") for _, m in rec.epochs] == [None, 0.2, 0.3]
    assert result.model.training
    _assert_same_weights(result.model.state_dict(), reference[0])


def test_worker_processes_are_seeded_reproducibly(tmp_path):
    # The noise "augmentation" runs in 2 worker processes, seeded from the loader's own generator: two runs
    # with the same seed agree bit for bit, and differ from the in-process loading (other random streams).
    cfg = train_config(epochs=2, num_workers=2)
    a = _run(tmp_path / "a", cfg).model.state_dict()
    b = _run(tmp_path / "b", cfg).model.state_dict()
    _assert_same_weights(a, b)
    c = _run(tmp_path / "c", train_config(epochs=2)).model.state_dict()
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_too_small_dataset_and_bad_device(tmp_path):
    with pytest.raises(ValueError, match="3 images make no full batch of train.batch_size 4"):
        _run(tmp_path, dataset=NoisyDataset(n=3))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device"):
            _run(tmp_path, device="cuda")


def test_trains_the_real_network(tmp_path):
    from yolov1.model import build_model

    cfg = dataclasses.replace(MODEL_CFG, input_size=16, width_multiplier=0.125, head="fc", head_hidden=16)
    result = train(cfg, train_config(epochs=1), NoisyDataset(n=8, cfg=cfg), checkpoint_dir=tmp_path)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert type(result.model) is type(build_model(cfg))


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, reference):
    ckpt = tmp_path / "ckpt"
    killed = subprocess.run([sys.executable, str(WORKER), "--out", str(tmp_path / "a"), "--checkpoint-dir",
                             str(ckpt), "--checkpoint-every", "1", "--kill-after-step", "7"],
                            env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "a").exists()
    # Checkpoints are written in the background and a save waits for the previous one: at the kill (right after
    # step 7's save was handed to the writer) last.pt is step 6's or step 7's, whole either way.
    assert load_checkpoint(ckpt / "last.pt")["global_step"] in (6, 7)

    resumed = subprocess.run([sys.executable, str(WORKER), "--out", str(tmp_path / "b"), "--checkpoint-dir",
                              str(ckpt)], env=_worker_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(tmp_path / "b" / "rank0.pt")
    assert final["steps"] == 12
    _assert_same_weights(final["state_dict"], reference[0])


@pytest.mark.slow
def test_ddp_two_ranks_on_cpu_match_one_process(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", str(WORKER), "--out", str(out), "--checkpoint-dir",
           str(tmp_path / "ckpt"), "--noise", "0", "--dropout", "0", "--no-batch-norm"]
    proc = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (load_checkpoint(out / f"rank{r}.pt")["state_dict"] for r in (0, 1))
    _assert_same_weights(rank0, rank1)  # DDP keeps the replicas in lockstep

    # One process with the same global batch 4 sees the same 4 images per step (DistributedSampler's
    # permutation split rank::2), and DDP averages the two half-batch gradients: the same SGD run up to
    # float summation order.
    cfg = dataclasses.replace(MODEL_CFG, dropout=0.0, batch_norm=False)
    torch.manual_seed(0)
    initial = TinyNet(cfg).state_dict()
    single = train(cfg, train_config(), NoisyDataset(noise=0.0), checkpoint_dir=tmp_path / "single",
                   build_fn=TinyNet).model.state_dict()
    for k in rank0:
        assert not torch.equal(rank0[k], initial[k]), k
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5)
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["global_step"] == 12  # rank 0 wrote it


# -- gradient accumulation, backbone options, checkpoint interval and best.pt ----------------------------------

def _plain_cfg():
    return dataclasses.replace(MODEL_CFG, dropout=0.0, batch_norm=False)


def test_grad_accumulation_follows_the_same_gradient_as_one_big_batch(tmp_path):
    # Without BatchNorm and dropout the mean loss over 4 images is the mean of two 2-image means: accumulating two
    # micro-batches of 2 must run the same SGD as batches of 4 (up to float summation order).
    data = NoisyDataset(noise=0.0)
    one = train(_plain_cfg(), train_config(), data, checkpoint_dir=tmp_path / "a", build_fn=TinyNet)
    two = train(_plain_cfg(), train_config(grad_accumulation=2), data, checkpoint_dir=tmp_path / "b",
                build_fn=TinyNet)
    assert one.steps == two.steps == 12
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert two.final_loss == pytest.approx(one.final_loss, rel=1e-5)


def test_micro_batch_rule_and_its_error_names_the_keys():
    from yolov1.train import micro_batch_size

    assert micro_batch_size(64, 8, 1) == 8 and micro_batch_size(64, 8, 2) == 4 and micro_batch_size(64, 1, 1) == 64
    with pytest.raises(ValueError, match=r"train.batch_size: 64 is not divisible by 3 process\(es\) x "
                                         r"train.grad_accumulation 2 \(= 6\)"):
        micro_batch_size(64, 3, 2)


def _snapshots():
    seen = {}

    def val_fn(model, epoch):
        seen[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"map_voc07": 0.1 * epoch}

    return seen, val_fn


def test_frozen_backbone_gets_no_update_and_keeps_its_batch_norm_statistics(tmp_path):
    from ddp_worker import TinyBackboneNet

    torch.manual_seed(0)  # train() builds the model under manual_seed(train.seed) too
    initial = TinyBackboneNet(MODEL_CFG).state_dict()
    seen, val_fn = _snapshots()
    result = _run(tmp_path, train_config(freeze_backbone_epochs=1, val_every=1), build_fn=TinyBackboneNet,
                  val_fn=val_fn)
    epoch1 = seen[1]
    for k in initial:  # epoch 1: backbone weights AND BatchNorm running statistics untouched; the head learned
        assert torch.equal(epoch1[k], initial[k]) == k.startswith("backbone."), k
    final = result.model.state_dict()
    assert not torch.equal(final["backbone.0.weight"], epoch1["backbone.0.weight"])  # unfrozen from epoch 2
    assert not torch.equal(final["backbone.1.running_mean"], epoch1["backbone.1.running_mean"])
    assert all(p.requires_grad for p in result.model.parameters())


def test_backbone_learning_rate_multiplier(tmp_path):
    from ddp_worker import TinyBackboneNet

    from yolov1.schedule import build_scheduler

    model = TinyBackboneNet(MODEL_CFG)
    cfg = train_config(backbone_lr_multiplier=0.1)
    optimizer = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["decay", "no_decay", "backbone_decay", "backbone_no_decay"]
    assert groups["decay"]["lr"] == pytest.approx(0.01) and groups["backbone_decay"]["lr"] == pytest.approx(0.001)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups["backbone_no_decay"]["params"]) == ["backbone.1.bias",
                                                                                   "backbone.1.weight"]
    scheduler = build_scheduler(optimizer, 12, cfg)
    for _ in range(7):  # through warm-up and the first x0.1 step: the ratio holds at every step
        optimizer.step()
        scheduler.step()
        assert groups["backbone_decay"]["lr"] == pytest.approx(0.1 * groups["decay"]["lr"])

    torch.manual_seed(0)
    initial = TinyBackboneNet(MODEL_CFG).state_dict()
    still = _run(tmp_path, train_config(backbone_lr_multiplier=0.0), build_fn=TinyBackboneNet).model.state_dict()
    assert torch.equal(still["backbone.0.weight"], initial["backbone.0.weight"])  # lr 0: not one step
    assert not torch.equal(still["head.1.weight"], initial["head.1.weight"])
    with pytest.raises(ValueError, match="train.freeze_backbone_epochs: 1 needs a model with a .backbone"):
        _run(tmp_path / "x", train_config(freeze_backbone_epochs=1))


def test_checkpoint_interval_in_epochs_and_best_follows_validation(tmp_path, monkeypatch):
    from yolov1 import checkpoint

    submitted = []
    real_submit = checkpoint.AsyncCheckpointWriter.submit

    def record(self, path, state):
        submitted.append((path.name, state.get("epoch")))
        real_submit(self, path, state)

    monkeypatch.setattr(checkpoint.AsyncCheckpointWriter, "submit", record)
    maps = {1: 0.2, 2: 0.5, 3: 0.3}
    seen = {}

    def val_fn(model, epoch):
        seen[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"map_voc07": maps[epoch]}

    result = _run(tmp_path, train_config(checkpoint_every=2, val_every=1), val_fn=val_fn,
                  classes=["a", "b", "c"])
    # last.pt every 2 epochs and after the last one; best.pt whenever validation improved (epochs 1 and 2)
    assert submitted == [("best.pt", 1), ("last.pt", 2), ("best.pt", 2), ("last.pt", 3)]
    assert result.best == {"metric": "map_voc07", "value": 0.5, "epoch": 2, "path": tmp_path / "best.pt"}
    best = load_checkpoint(tmp_path / "best.pt")  # the load_weights layout (the stage test loads a real one)
    assert best["classes"] == ["a", "b", "c"] and best["model_config"]["grid_size"] == 2 and best["epoch"] == 2
    _assert_same_weights(best["state_dict"], seen[2])
    assert load_checkpoint(tmp_path / "last.pt")["best"] == {"metric": "map_voc07", "value": 0.5, "epoch": 2}


def test_a_full_disk_fails_training_with_the_checkpoint_path(tmp_path, monkeypatch):
    import errno

    from yolov1 import checkpoint

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", full)
    with pytest.raises(checkpoint.CheckpointError, match=r"last.pt: no space left on device"):
        _run(tmp_path)
    assert not (tmp_path / "last.pt").exists() and list(tmp_path.iterdir()) == []


def test_sync_batch_norm_only_on_cuda_with_several_ranks(caplog):
    from yolov1.distributed import DistInfo, maybe_sync_batch_norm

    net = TinyNet(MODEL_CFG)
    two = DistInfo(rank=0, world=2)
    assert maybe_sync_batch_norm(net, True, DistInfo(), torch.device("cuda")) is net  # one process: nothing to sync
    assert maybe_sync_batch_norm(net, True, two, torch.device("cpu")) is net
    assert "SyncBatchNorm needs CUDA" in caplog.text
    converted = maybe_sync_batch_norm(TinyNet(MODEL_CFG), True, two, torch.device("cuda"))  # conversion only
    assert isinstance(converted.norm, torch.nn.SyncBatchNorm)


def test_ema_weights_are_validated_saved_and_returned_and_resume_exactly(tmp_path):
    """train.ema_decay > 0: validation sees the average, best.pt and the result hold it, the live weights
    differ; a run stopped by SIGTERM resumes to the same average bit for bit (it is in last.pt)."""
    cfg = train_config(ema_decay=0.9, val_every=1)
    seen = []

    def val_fn(model, epoch):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"map_voc07": float(epoch)}

    full = _run(tmp_path / "full", cfg, val_fn=val_fn)
    _assert_same_weights(seen[-1], full.model.state_dict())  # validated = returned = the average
    best = load_checkpoint(tmp_path / "full" / "best.pt")
    _assert_same_weights(best["state_dict"], full.model.state_dict())
    plain = _run(tmp_path / "plain")  # same seed, no EMA: the live weights the average was taken of
    assert any(not torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                    plain.model.state_dict().values(), strict=True))

    rec = Recorder(on_step=lambda step: step == 5 and os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path / "resumed", cfg, callbacks=rec, val_fn=val_fn)
    resumed = _run(tmp_path / "resumed", cfg, val_fn=val_fn)
    assert resumed.resumed_from_step == 6
    _assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
