"""Training: datasets, the training loop (the paper's recipe), checkpoints/resume and DDP.

    from regnet_ext.training import load_dataset, fit
    train, val = load_dataset("digits", split="train"), load_dataset("digits", split="val")
    result = fit(model, train, val, epochs=5)   # {"top1_acc": ..., "top1_error": ..., ...}
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_dataset, num_classes_of
from .loop import fit
from .optim import sgd
from .schedule import CosineWithWarmup

__all__ = ["load_dataset", "num_classes_of", "fit", "sgd", "CosineWithWarmup", "save_checkpoint",
           "load_checkpoint"]
