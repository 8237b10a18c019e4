"""The training loop: the paper's recipe (SGD with Nesterov momentum, cosine learning rate per
iteration, optional linear warmup) with per-epoch evaluation, checkpoints/resume and DDP."""
import math
import os
import time

import torch
import torch.nn as nn

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .distributed import evaluation_shard, setup_distributed
from .optim import sgd
from .progress import Progress, log
from .schedule import CosineWithWarmup

# Settings that must match between a checkpoint and the run that resumes it (the schedule and the
# data order depend on them).
RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "momentum", "nesterov",
               "warmup_epochs", "warmup_factor", "label_smoothing", "seed", "train_size")


class ResumeMismatch(ValueError):
    """A checkpoint written with other settings than this run's: ``key`` (a RESUME_KEYS entry, or
    ``model_record.K`` for entry K of model_record), its ``saved`` and ``current`` values."""

    def __init__(self, path, key, saved, current):
        self.path, self.key, self.saved, self.current = path, key, saved, current
        super().__init__(f"resume: the checkpoint {path!r} was written with {key}={saved!r} but "
                         f"this run has {key}={current!r}; use the same settings or a new "
                         "checkpoint path")


class TrainingDiverged(RuntimeError):
    """The training loss became inf or nan (a learning rate or weight decay too large)."""


def fit(model, train_set, val_set, *, epochs, batch_size=128, lr=0.1, weight_decay=5e-5,
        momentum=0.9, nesterov=True, warmup_epochs=0, warmup_factor=0.1, label_smoothing=0.0,
        seed=0, device="cpu", progress=True, fused=False, checkpoint=None, resume=False,
        num_workers=0, sync_batchnorm=False, channels_last=True, on_epoch_end=None, model_record=None):
    """Trains ``model`` on ``train_set``, evaluates on ``val_set`` after every epoch.

    Recipe (pycls): SGD (PyTorch's ``fused=True`` implementation where it takes the parameters:
    one kernel per step instead of several per parameter), momentum 0.9, Nesterov, weight decay
    on every parameter, cross entropy
    (``label_smoothing`` 0 by default), learning rate ``lr * 0.5 * (1 + cos(pi * t / T))`` updated
    every iteration t of T, times a linear warmup from ``warmup_factor`` to 1 over the first
    ``warmup_epochs`` (may be fractional). Training batches drop the last partial batch.

    ``batch_size`` is the *global* batch: under torchrun (WORLD_SIZE > 1) each of the N processes
    takes ``batch_size / N`` samples per step (DistributedSampler, DistributedDataParallel; gloo on
    CPU, nccl on CUDA), so the recipe and, for models without BatchNorm, the parameters do not
    depend on the process count. ``sync_batchnorm=True`` converts BatchNorm to SyncBatchNorm
    (CUDA only). Only rank 0 prints and writes the checkpoint.

    Deterministic on CPU for a given ``seed``: the global RNGs are seeded with ``seed + rank`` and
    the data order is ``randperm`` seeded with ``seed + epoch``.

    ``checkpoint``: a file written after every epoch (model, optimizer, scheduler, epoch, history,
    RNG state of every process; atomic); one that exists already is refused (ValueError) unless
    ``resume=True``, which continues from it when it exists and ends
    in the same state as an uninterrupted run (a checkpoint written by PyTorch's other SGD
    implementation resumes on this run's: the same update, rounded differently). ``fused=True``
    (our kernels, unrelated to the optimizer's) swaps them in with ``regnet_ext.fuse(model)``
    first. ``channels_last`` (default) trains in NHWC, the layout oneDNN and the fused kernels are
    fastest in. ``on_epoch_end(epoch, record)`` is called on every process after each epoch's
    checkpoint. ``model_record``: plain values (dicts, lists, numbers, strings) the checkpoint keeps
    in its settings under "model", for whoever rebuilds the model from it (`regnet-ext train`: the
    model's AnyNetSpec and the image resolution, which `regnet-ext export` reads). The model is
    trained in place.

    Returns a dict: top1_acc and top1_error (percent, last epoch, on val_set), best_top1_acc,
    train_time_s (all epochs, including those before a resume), epochs, history (one record per
    epoch: lr, train_loss, train_acc, val_loss, val_acc, time_s), resumed_from_epoch, world_size,
    device, num_params, images_per_s.
    """
    settings = _check_settings(epochs=epochs, batch_size=batch_size, lr=lr,
                               weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                               warmup_epochs=warmup_epochs, warmup_factor=warmup_factor,
                               label_smoothing=label_smoothing, seed=seed,
                               num_workers=num_workers)
    if model_record is not None:
        settings["model"] = model_record
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if resume and checkpoint is None:
        raise ValueError("resume: resume=True needs a checkpoint path")
    if checkpoint is not None and not resume and os.path.lexists(checkpoint):
        # The first epoch would replace it: another run's weights lost to a missing resume=True.
        raise ValueError(f"checkpoint: {os.fspath(checkpoint)!r} exists; pass resume=True to continue "
                         "from it, or remove it (or choose another path) to start over")
    ctx = setup_distributed(device)
    completed = False
    try:
        result = _fit(model, train_set, val_set, settings, ctx, progress=progress and ctx.is_main,
                      fused=fused, checkpoint=checkpoint, resume=resume, num_workers=num_workers,
                      sync_batchnorm=sync_batchnorm, channels_last=channels_last,
                      on_epoch_end=on_epoch_end)
        completed = True
        return result
    finally:
        ctx.close(synchronize=completed)


def _fit(model, train_set, val_set, settings, ctx, *, progress, fused, checkpoint, resume,
         num_workers, sync_batchnorm, channels_last, on_epoch_end):
    device = ctx.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    if batch_size % ctx.world_size:
        raise ValueError(f"batch_size: the global batch {batch_size} must be divisible by the "
                         f"number of processes {ctx.world_size}")
    if len(train_set) < batch_size:
        raise ValueError(f"batch_size: {batch_size} is larger than the training set "
                         f"({len(train_set)} samples)")
    settings["train_size"] = len(train_set)
    torch.manual_seed(settings["seed"] + ctx.rank)

    model = _prepare_model(model, device, fused, sync_batchnorm, memory_format)
    sampler, train_loader, val_loader = _loaders(train_set, val_set, batch_size, settings["seed"],
                                                 num_workers, ctx)
    steps_per_epoch = len(train_loader)

    optimizer = sgd(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                    nesterov=settings["nesterov"], weight_decay=settings["weight_decay"])
    schedule = CosineWithWarmup(epochs * steps_per_epoch,
                                warmup_steps=int(round(settings["warmup_epochs"] * steps_per_epoch)),
                                warmup_factor=settings["warmup_factor"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    start_epoch, history = 0, []
    if resume and os.path.isfile(checkpoint):
        start_epoch, history = _restore(checkpoint, settings, ctx, model, optimizer, scheduler)
        log(f"resumed from {checkpoint} after epoch {start_epoch}/{epochs}", progress)
    elif resume:
        log(f"no checkpoint at {checkpoint}: starting from scratch", progress)
    resumed_from = start_epoch

    trained = model
    if ctx.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])

    run_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        t0 = time.perf_counter()
        bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", enabled=progress)
        try:
            loss, acc = _train_one_epoch(trained, train_loader, criterion, optimizer, scheduler,
                                         device, memory_format, ctx, bar)
        finally:
            bar.close()
        val_loss, val_acc = _evaluate(trained, val_loader, device, memory_format, ctx, criterion)
        record.update(train_loss=loss, train_acc=acc, val_loss=val_loss, val_acc=val_acc,
                      time_s=time.perf_counter() - t0)
        history.append(record)
        log(f"epoch {epoch + 1}/{epochs}  lr {record['lr']:.4f}  train loss {loss:.4f} "
            f"acc {acc:.2f}%  val loss {val_loss:.4f} acc {val_acc:.2f}%  "
            f"({record['time_s']:.1f}s)", progress)
        if checkpoint is not None:
            _save(checkpoint, settings, ctx, model, optimizer, scheduler, epoch + 1, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, dict(record))
    run_time = time.perf_counter() - run_start

    images = (epochs - resumed_from) * steps_per_epoch * batch_size
    return _summary(history, epochs, resumed_from, images / run_time if images else None, ctx,
                    model)


def _loaders(train_set, val_set, batch_size, seed, num_workers, ctx):
    # One sampler for one and many processes: the data order is randperm(seed + epoch), and
    # process r of N takes every N-th index, so N processes together see the 1-process batches.
    sampler = torch.utils.data.distributed.DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    pin = ctx.device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size // ctx.world_size, sampler=sampler, drop_last=True,
        num_workers=num_workers, pin_memory=pin)
    val_loader = torch.utils.data.DataLoader(
        evaluation_shard(val_set, ctx), batch_size=batch_size // ctx.world_size, shuffle=False,
        num_workers=num_workers, pin_memory=pin)
    return sampler, train_loader, val_loader


def _summary(history, epochs, resumed_from, images_per_s, ctx, model):
    last = history[-1]
    return {
        "top1_acc": last["val_acc"],
        "top1_error": 100.0 - last["val_acc"],
        "best_top1_acc": max(r["val_acc"] for r in history),
        "final_train_loss": last["train_loss"],
        "train_time_s": sum(r["time_s"] for r in history),
        "images_per_s": images_per_s,
        "epochs": epochs,
        "resumed_from_epoch": resumed_from,
        "history": history,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def _evaluate(model, loader, device, memory_format, ctx, criterion):
    """(mean loss, top-1 accuracy in percent) over a loader, summed over processes."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in loader:
            x, y = _to_device(x, device, memory_format), y.to(device, non_blocking=True)
            out = model(x)
            totals[0] += criterion(out, y).double() * y.numel()
            totals[1] += (out.argmax(dim=1) == y).sum()
            totals[2] += y.numel()
    loss_sum, correct, count = ctx.all_reduce_sum(totals).tolist()
    if count == 0:
        raise ValueError("val_set: the evaluation set is empty")
    return loss_sum / count, 100.0 * correct / count


def _train_one_epoch(model, loader, criterion, optimizer, scheduler, device, memory_format, ctx,
                     bar):
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for step, (x, y) in enumerate(loader):
        x, y = _to_device(x, device, memory_format), y.to(device, non_blocking=True)
        out = model(x)
        loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            totals[0] += loss.detach().double() * y.numel()
            totals[1] += (out.argmax(dim=1) == y).sum()
            totals[2] += y.numel()
        # Reading the loss synchronises a GPU: only refresh the bar's numbers now and then.
        bar.update(**({"loss": f"{loss.item():.3f}"} if bar.enabled and step % 10 == 0 else {}))
    loss_sum, correct, count = ctx.all_reduce_sum(totals).tolist()
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"training diverged: the loss is {loss_sum} (try a smaller lr)")
    return loss_sum / count, 100.0 * correct / count


def _to_device(x, device, memory_format):
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x


def _prepare_model(model, device, fused, sync_batchnorm, memory_format):
    model = model.to(device, memory_format=memory_format)
    if fused:
        import regnet_ext

        try:
            fuse = regnet_ext.fuse  # imports regnet_ext.nn, which needs the compiled extension
        except (AttributeError, ImportError) as exc:
            raise RuntimeError(f"fused=True: the fused kernels are not available ({exc}); "
                               "train with fused=False") from exc
        model = fuse(model) or model
        model = model.to(device, memory_format=memory_format)
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _save(path, settings, ctx, model, optimizer, scheduler, epochs_done, history):
    # Every process's RNG state, so that a resumed run draws the same numbers on every rank.
    rng = ctx.all_gather_object(capture_rng_state())
    if ctx.is_main:
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "epoch": epochs_done,
                               "history": history, "settings": settings,
                               "world_size": ctx.world_size, "rng": rng})
    ctx.barrier()


def _restore(path, settings, ctx, model, optimizer, scheduler):
    state = load_checkpoint(path, map_location=ctx.device)
    saved = state["settings"]
    for key in RESUME_KEYS:
        if saved.get(key) != settings.get(key):
            raise ResumeMismatch(path, key, saved.get(key), settings.get(key))
    # The model record (`regnet-ext train`: the architecture and the resolution) must match too:
    # the run would otherwise not be the uninterrupted one, and the record would change under it.
    saved_record, record = saved.get("model"), settings.get("model")
    if isinstance(saved_record, dict) and isinstance(record, dict):
        for key in sorted(saved_record.keys() | record.keys()):
            if saved_record.get(key) != record.get(key):
                raise ResumeMismatch(path, f"model_record.{key}", saved_record.get(key),
                                     record.get(key))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # another architecture: missing/unexpected keys, other shapes
        raise ValueError(f"resume: the checkpoint {path!r} holds the weights of another model "
                         f"({str(e).splitlines()[0].rstrip(':. ')}); use the same model or a new "
                         "checkpoint path") from e
    # The checkpoint's groups carry the implementation they ran with (fused or not): keep this
    # run's, which computes the same update.
    implementation = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, (fused, foreach) in zip(optimizer.param_groups, implementation):
        group["fused"], group["foreach"] = fused, foreach
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    if len(rng) == ctx.world_size:
        restore_rng_state(_to_cpu(rng[ctx.rank]))
    else:
        log(f"resume: checkpoint written by {len(rng)} processes, now {ctx.world_size}: random "
            f"augmentation will not replay exactly", ctx.is_main)
    return int(state["epoch"]), list(state["history"])


def _to_cpu(obj):
    # RNG states must be CPU ByteTensors; map_location may have moved them.
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _check_settings(**s):
    def positive_int(name):
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")

    positive_int("epochs")
    positive_int("batch_size")
    if not (isinstance(s["num_workers"], int) and s["num_workers"] >= 0):
        raise ValueError(f"num_workers: expected an integer >= 0, got {s['num_workers']!r}")
    # Finite too: an infinite lr or weight decay only turns the weights into nan.
    if not 0 < s["lr"] < math.inf:
        raise ValueError(f"lr: expected lr > 0 and finite, got {s['lr']!r}")
    if not 0 <= s["weight_decay"] < math.inf:
        raise ValueError(f"weight_decay: expected >= 0 and finite, got {s['weight_decay']!r}")
    if not 0 <= s["momentum"] < 1:
        raise ValueError(f"momentum: expected 0 <= momentum < 1, got {s['momentum']!r}")
    if s["nesterov"] and s["momentum"] == 0:
        raise ValueError("nesterov: Nesterov momentum needs momentum > 0")
    if not 0 <= s["warmup_epochs"] <= s["epochs"]:
        raise ValueError(f"warmup_epochs: expected 0..epochs ({s['epochs']}), "
                         f"got {s['warmup_epochs']!r}")
    if not 0 < s["warmup_factor"] <= 1:
        raise ValueError(f"warmup_factor: expected 0 < warmup_factor <= 1, "
                         f"got {s['warmup_factor']!r}")
    if not 0 <= s["label_smoothing"] < 1:
        raise ValueError(f"label_smoothing: expected 0 <= label_smoothing < 1, "
                         f"got {s['label_smoothing']!r}")
    if not isinstance(s["seed"], int):
        raise ValueError(f"seed: expected an integer, got {s['seed']!r}")
    s = dict(s)
    s.pop("num_workers")  # not part of the recipe: a resume may use a different count
    return s
