"""fit(): the recipe against a hand-written float64 reference, determinism, checkpoints/resume,
fused switch and argument checks. Tiny models stand in for RegNets (the loop is model-agnostic)."""
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

import regnet_ext
from regnet_ext.training import CosineWithWarmup, fit, load_checkpoint


def random_dataset(n, classes=3, size=6, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[i], int(y[i])) for i in range(n)]


def conv_net(classes=3, batchnorm=False, dropout=0.0, dtype=torch.float32):
    layers = [nn.Conv2d(3, 5, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(5))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(5, classes))
    return nn.Sequential(*layers).to(dtype)


def reference_lr(base, step, total, warmup_steps, warmup_factor):
    lr = base * 0.5 * (1 + math.cos(math.pi * step / total))
    if step < warmup_steps:
        lr *= warmup_factor + (1 - warmup_factor) * step / warmup_steps
    return lr


def test_fit_is_nesterov_sgd_with_per_iteration_cosine_lr():
    # Full-batch steps make the gradient independent of the shuffle; float64 makes it exact.
    data = random_dataset(16, dtype=torch.float64)
    model = conv_net(dtype=torch.float64)
    reference = conv_net(dtype=torch.float64)
    reference.load_state_dict(model.state_dict())
    epochs, lr, wd, mom, warmup_epochs, warmup_factor = 5, 0.3, 1e-3, 0.9, 2, 0.25
    fit(model, data, data, epochs=epochs, batch_size=16, lr=lr, weight_decay=wd, momentum=mom,
        warmup_epochs=warmup_epochs, warmup_factor=warmup_factor, progress=False)

    x = torch.stack([d[0] for d in data])
    y = torch.tensor([d[1] for d in data])
    params = list(reference.parameters())
    buffers = [None] * len(params)
    for step in range(epochs):
        loss = nn.functional.cross_entropy(reference(x), y)
        grads = torch.autograd.grad(loss, params)
        step_lr = reference_lr(lr, step, epochs, warmup_epochs, warmup_factor)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g + wd * p
                buffers[i] = g.clone() if buffers[i] is None else mom * buffers[i] + g
                p -= step_lr * (g + mom * buffers[i])
    for ours, ref in zip(model.parameters(), params):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_schedule_values():
    s = CosineWithWarmup(10, warmup_steps=4, warmup_factor=0.1)
    for step in range(12):
        assert s(step) == pytest.approx(reference_lr(1.0, min(step, 10), 10, 4, 0.1), abs=1e-15)
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineWithWarmup(10, warmup_steps=11)


def test_result_reports_accuracy_of_the_trained_model():
    train, val = random_dataset(24, seed=2), random_dataset(13, seed=3)
    model = conv_net(batchnorm=True)
    result = fit(model, train, val, epochs=2, batch_size=8, lr=0.05, progress=False)
    model.eval()
    with torch.no_grad():
        pred = model(torch.stack([v[0] for v in val])).argmax(1)
    correct = (pred == torch.tensor([v[1] for v in val])).sum().item()
    assert result["top1_acc"] == pytest.approx(100.0 * correct / 13)
    assert result["top1_error"] == pytest.approx(100.0 - result["top1_acc"])
    assert result["epochs"] == 2 and len(result["history"]) == 2
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert result["history"][0]["lr"] == 0.05 and result["history"][1]["lr"] < 0.05
    assert result["train_time_s"] > 0 and result["world_size"] == 1
    assert result["num_params"] == sum(p.numel() for p in model.parameters())


def test_fit_is_deterministic_given_the_seed():
    train = random_dataset(32, seed=4)

    def run(seed):
        torch.manual_seed(0)
        model = conv_net(batchnorm=True, dropout=0.3)
        fit(model, train, train, epochs=2, batch_size=8, seed=seed, progress=False)
        return torch.cat([t.flatten() for t in model.state_dict().values()])

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_resume_ends_in_the_same_state_as_an_uninterrupted_run(tmp_path):
    # BatchNorm buffers, momentum buffers, the schedule, the data order and dropout's RNG must
    # all be restored for the parameters to come out bit-identical.
    train, val = random_dataset(40, seed=5), random_dataset(10, seed=6)
    settings = dict(epochs=3, batch_size=8, lr=0.1, warmup_epochs=1, progress=False)
    torch.manual_seed(0)
    straight = conv_net(batchnorm=True, dropout=0.3)
    first = conv_net(batchnorm=True, dropout=0.3)
    first.load_state_dict(straight.state_dict())
    full = fit(straight, train, val, **settings)

    class Interrupted(Exception):
        pass

    def stop_after_first_epoch(epoch, record):
        if epoch == 0:
            raise Interrupted

    path = tmp_path / "run" / "ckpt.pt"
    with pytest.raises(Interrupted):
        fit(first, train, val, checkpoint=path, on_epoch_end=stop_after_first_epoch, **settings)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(path.parent) == ["ckpt.pt"]  # the atomic write left no temporary file

    resumed_model = conv_net(batchnorm=True, dropout=0.3)  # fresh weights: must be overwritten
    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG
    resumed = fit(resumed_model, train, val, checkpoint=path, resume=True, **settings)
    assert resumed["resumed_from_epoch"] == 1
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in full["history"]]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in resumed["history"]] == strip
    assert load_checkpoint(path)["epoch"] == 3


def _sgd_implementation(path):
    groups = load_checkpoint(path)["optimizer"]["param_groups"]
    return {(g.get("fused"), g.get("foreach")) for g in groups}


def test_fit_runs_pytorchs_fused_sgd_and_the_default_where_fused_is_refused(tmp_path):
    train, val = random_dataset(16), random_dataset(8, seed=2)
    fit(conv_net(), train, val, epochs=1, batch_size=8, progress=False, checkpoint=tmp_path / "c.pt")
    assert _sgd_implementation(tmp_path / "c.pt") == {(True, None)}  # torch >= 2.4 on the CPU

    # PyTorch refuses fused=True only at the first step: the choice must be made before it.
    settings = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    from regnet_ext.training import sgd

    assert sgd(conv_net().parameters(), **settings).defaults["fused"] is True
    meta = conv_net().to("meta")  # a device without fused kernels
    optimizer = sgd(meta.parameters(), **settings)
    assert not optimizer.defaults["fused"]
    for p in meta.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()  # runs: the default implementation


def test_resume_keeps_this_runs_sgd_implementation(tmp_path):
    # A checkpoint written by the default (unfused) SGD resumes on the fused one, and the reverse
    # would too: both compute the same update, and the checkpoint's groups must not switch it.
    train, val = random_dataset(16), random_dataset(8, seed=2)
    settings = dict(epochs=2, batch_size=8, progress=False)
    path = tmp_path / "ckpt.pt"

    class Interrupted(Exception):
        pass

    def stop(epoch, record):
        raise Interrupted

    with pytest.raises(Interrupted):
        fit(conv_net(), train, val, checkpoint=path, on_epoch_end=stop, **settings)
    state = load_checkpoint(path)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # as written before fit() took the fused kernel
    torch.save(state, path)
    assert _sgd_implementation(path) == {(None, None)}
    fit(conv_net(), train, val, checkpoint=path, resume=True, **settings)
    assert load_checkpoint(path)["epoch"] == 2
    assert _sgd_implementation(path) == {(True, None)}


def test_resume_refuses_a_checkpoint_with_other_settings(tmp_path):
    train = random_dataset(16)
    path = tmp_path / "ckpt.pt"
    fit(conv_net(), train, train, epochs=1, batch_size=8, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit(conv_net(), train, train, epochs=1, batch_size=8, lr=0.2, checkpoint=path,
            resume=True, progress=False)


def test_existing_checkpoint_is_refused_without_resume(tmp_path):
    train = random_dataset(16)
    path = tmp_path / "ckpt.pt"
    fit(conv_net(), train, train, epochs=1, batch_size=8, checkpoint=path, progress=False)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"^checkpoint: .*ckpt.pt' exists; pass resume=True"):
        fit(conv_net(), train, train, epochs=1, batch_size=8, checkpoint=path, progress=False)
    assert path.read_bytes() == before  # refused before any epoch


def test_resume_refuses_another_model_record_or_architecture(tmp_path):
    from regnet_ext.training.loop import ResumeMismatch

    train = random_dataset(16)
    path = tmp_path / "ckpt.pt"
    settings = dict(epochs=1, batch_size=8, checkpoint=path, progress=False)
    fit(conv_net(), train, train, model_record={"resolution": 6}, **settings)
    with pytest.raises(ResumeMismatch, match=r"model_record.resolution=6 but this run has "
                                             r"model_record.resolution=8") as caught:
        fit(conv_net(), train, train, model_record={"resolution": 8}, resume=True, **settings)
    assert (caught.value.key, caught.value.saved, caught.value.current) == (
        "model_record.resolution", 6, 8)
    # Without a record to compare, another architecture is still a ValueError naming resume.
    with pytest.raises(ValueError, match="^resume: .* holds the weights of another model"):
        fit(conv_net(batchnorm=True), train, train, resume=True, **settings)


def test_divergence_raises_training_diverged():
    from regnet_ext.training.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="the loss is nan"):
        fit(conv_net(), random_dataset(8), random_dataset(4), epochs=1, batch_size=4, lr=1e30,
            progress=False)


def test_resume_without_a_checkpoint_file_starts_from_scratch(tmp_path):
    train = random_dataset(16)
    path = tmp_path / "new.pt"
    result = fit(conv_net(), train, train, epochs=1, batch_size=8, checkpoint=path, resume=True,
                 progress=False)
    assert result["resumed_from_epoch"] == 0 and path.is_file()


def test_fused_without_fuse_raises_clearly(monkeypatch):
    monkeypatch.delitem(regnet_ext._LAZY, "fuse")  # as if the extension were missing
    with pytest.raises(RuntimeError, match="fused"):
        fit(conv_net(), random_dataset(8), random_dataset(4), epochs=1, batch_size=4,
            fused=True, progress=False)


def test_fused_trains_the_model_fuse_returns(monkeypatch):
    calls = []

    def fake_fuse(model):
        calls.append(model)
        return model

    monkeypatch.setattr(regnet_ext, "fuse", fake_fuse, raising=False)
    model = conv_net()
    before = model[0].weight.detach().clone()
    fit(model, random_dataset(8), random_dataset(4), epochs=1, batch_size=4, fused=True,
        progress=False)
    assert calls == [model] and not torch.equal(model[0].weight, before)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(epochs=0), "epochs"), (dict(epochs=1.5), "epochs"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=64), "batch_size"), (dict(lr=0.0), "lr"), (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"), (dict(warmup_epochs=5), "warmup_epochs"),
    (dict(label_smoothing=1.0), "label_smoothing"), (dict(resume=True), "resume"),
    (dict(momentum=0.0), "nesterov"), (dict(num_workers=-1), "num_workers"),
    (dict(lr=math.inf), "lr"), (dict(lr=math.nan), "lr"),
    (dict(weight_decay=math.inf), "weight_decay"),
])
def test_bad_arguments_name_the_argument(kwargs, argument):
    settings = dict(epochs=2, batch_size=4, progress=False)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        fit(conv_net(), random_dataset(8), random_dataset(4), **settings)
    with pytest.raises(ValueError, match="model"):
        fit("not a model", random_dataset(8), random_dataset(4), epochs=1)


def test_progress_and_summary_go_to_stderr(capsys):
    fit(conv_net(), random_dataset(8), random_dataset(4), epochs=1, batch_size=4)
    captured = capsys.readouterr()
    assert captured.out == "" and "epoch 1/1" in captured.err


def test_without_tqdm_progress_falls_back_to_plain_lines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    fit(conv_net(), random_dataset(8), random_dataset(4), epochs=2, batch_size=4)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "it/s" not in err
