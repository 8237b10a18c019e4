"""Datasets for training: sklearn's digits (default) and ImageFolder trees."""
import re
import sys

import numpy as np
import pytest
import torch

from regnet_ext.training import data as data_module
from regnet_ext.training import load_dataset, num_classes_of

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def test_digits_split_sizes_labels_and_classes():
    train, val = load_dataset("digits", split="train"), load_dataset("digits", split="val")
    target = sklearn_datasets.load_digits().target
    assert len(train) + len(val) == len(target) == 1797
    assert len(val) == round(0.2 * len(target))
    counts = np.bincount(train.labels.numpy(), minlength=10) + np.bincount(val.labels.numpy(),
                                                                           minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(target, minlength=10))
    assert num_classes_of(train) == num_classes_of(val) == 10
    image, label = train[3]
    assert isinstance(label, int) and 0 <= label < 10
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)


@pytest.mark.parametrize("split", ["train", "val"])
def test_digits_images_are_the_sklearn_images_with_their_labels(split):
    # At resolution 8 each image is an affine map of one original: correlation 1 with it.
    ds = load_dataset("digits", resolution=8, split=split)
    bunch = sklearn_datasets.load_digits()
    ours = ds.images[:, 0].reshape(len(ds), -1).double()
    orig = torch.from_numpy(bunch.images.reshape(len(bunch.target), -1)).double()

    def standardise(m):
        m = m - m.mean(dim=1, keepdim=True)
        return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)

    corr = standardise(ours) @ standardise(orig).T
    best, where = corr.max(dim=1)
    assert torch.all(best > 1 - 1e-6)
    # Duplicated originals may match another copy; its label must still agree.
    assert torch.equal(torch.from_numpy(bunch.target)[where], ds.labels)
    # Items have three channels, each a copy of the grey image.
    image, label = ds[5]
    assert image.shape == (3, 8, 8) and label == ds.labels[5]
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    images, labels = ds.tensors()
    assert images.shape == (len(ds), 3, 8, 8) and torch.equal(images[5], image)


def test_digits_train_split_is_normalised_at_every_resolution():
    for resolution in (8, 24, 40):
        images = load_dataset("digits", resolution=resolution).images
        assert images.shape[-2:] == (resolution, resolution)
        assert abs(images.mean().item()) < 1e-4
        assert abs(images.std().item() - 1) < 1e-4


def test_digits_split_is_fixed():
    a, b = load_dataset("digits", split="val"), load_dataset("digits", split="val")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    data_module._digits_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(RuntimeError, match="pip install scikit-learn"):
            load_dataset("digits")
    finally:
        data_module._digits_arrays.cache_clear()


def _write_image_folder(root, colours):
    from PIL import Image

    for split, classes in colours.items():
        for cls, rgbs in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, rgb in enumerate(rgbs):
                Image.new("RGB", (20, 14), tuple(rgb)).save(folder / f"{i}.png")


def test_image_folder_val_split_is_resized_and_normalised(tmp_path):
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(1)
    colours = {split: {cls: rng.integers(0, 256, size=(2, 3)).tolist() for cls in ("cat", "dog")}
               for split in ("train", "val")}
    _write_image_folder(tmp_path, colours)
    val = load_dataset(tmp_path, resolution=12, split="val")
    assert val.classes == ["cat", "dog"] and num_classes_of(val) == 2
    mean, std = torch.tensor(data_module.IMAGENET_MEAN), torch.tensor(data_module.IMAGENET_STD)
    for index, (cls, i) in enumerate([("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1)]):
        image, label = val[index]
        assert image.shape == (3, 12, 12) and label == val.classes.index(cls)
        # A solid-colour image stays solid under resize/crop: every pixel is the normalised colour.
        expected = (torch.tensor(colours["val"][cls][i]) / 255.0 - mean) / std
        torch.testing.assert_close(image, expected[:, None, None].expand(3, 12, 12),
                                   atol=1e-6, rtol=0)
    train = load_dataset(str(tmp_path), resolution=12, split="train")
    assert len(train) == 4 and train[0][0].shape == (3, 12, 12)


@pytest.mark.parametrize("val_classes", [("a", "c"), ("a", "b", "c", "d")])
def test_image_folder_splits_must_have_the_same_classes(val_classes, tmp_path):
    # ImageFolder numbers each split's classes alone: val's 'c' would be label 1 (missing 'b') or
    # an extra class would index past the model's outputs.
    pytest.importorskip("torchvision")
    _write_image_folder(tmp_path, {"train": {c: [(0, 0, 0)] for c in ("a", "b", "c")},
                                   "val": {c: [(0, 0, 0)] for c in val_classes}})
    expected = f"train/ {['a', 'b', 'c']} and val/ {list(val_classes)}"
    for split in ("train", "val"):
        with pytest.raises(ValueError, match="^name_or_path: .*" + re.escape(expected)):
            load_dataset(tmp_path, resolution=8, split=split)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="name_or_path"):
        load_dataset("imagenet-does-not-exist")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="test")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="resolution"):
            load_dataset("digits", resolution=bad)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="val/"):
        load_dataset(tmp_path, split="val")
    with pytest.raises(ValueError, match="classes"):
        num_classes_of([1, 2, 3])
