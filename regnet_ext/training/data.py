"""Datasets for training: scikit-learn's bundled digits (the default: small, real, no download)
or any ``torchvision.datasets.ImageFolder`` tree with ``train/`` and ``val/`` subfolders."""
import functools
import os

import torch
import torch.nn.functional as F

SPLITS = ("train", "val")
DIGITS = "digits"
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# ImageNet statistics: the usual normalisation for natural images in an ImageFolder.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTensorDataset(torch.utils.data.Dataset):
    """Images held in memory as one float tensor [N, C, R, R]; items are (image, int label).

    Single-channel images are stored once and broadcast to ``channels`` per item (a view), so a
    grey dataset at a large resolution costs a third of the memory.
    """

    def __init__(self, images, labels, classes, channels=3):
        if images.dim() != 4 or images.shape[1] not in (1, channels):
            raise ValueError(f"images: expected [N, 1 or {channels}, H, W], got {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"labels: expected {images.shape[0]} labels, got {labels.shape[0]}")
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.channels = channels

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index].expand(self.channels, -1, -1), int(self.labels[index])

    def tensors(self):
        """All images [N, channels, R, R] (a broadcast view) and labels [N]."""
        return self.images.expand(-1, self.channels, -1, -1), self.labels


def load_dataset(name_or_path=DIGITS, *, resolution=32, split="train", augment=None):
    """Returns a torch Dataset of (normalised float image [3, R, R], int label).

    ``"digits"``: scikit-learn's 1,797 bundled 8x8 handwritten digits, split 80/20 into train/val
    by a fixed seeded permutation, upsampled bilinearly to ``resolution``, repeated to 3 channels
    and normalised with the train split's mean and std. A directory: ``ImageFolder(path/split)``
    resized to ``resolution``; the train split is augmented (random resized crop + horizontal flip)
    unless ``augment=False``. Every returned dataset has a ``classes`` list.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: expected a positive integer, got {resolution!r}")
    if name_or_path == DIGITS:
        return _digits(resolution, split)
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return _image_folder(path, resolution, split, split == "train" if augment is None else augment)
    raise ValueError(f"name_or_path: expected {DIGITS!r} or a directory with train/ and val/ "
                     f"subfolders (torchvision ImageFolder layout), got {name_or_path!r}")


def num_classes_of(dataset):
    """Number of classes of a dataset from load_dataset (or any dataset with ``classes``)."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise ValueError("dataset: expected a dataset with a `classes` attribute "
                         f"(as load_dataset returns), got {type(dataset).__name__}")
    return len(classes)


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RuntimeError("the 'digits' dataset needs scikit-learn (it ships the images, no "
                           "download): pip install scikit-learn") from e
    bunch = load_digits()
    # Pixel values are integers 0..16.
    images = torch.from_numpy(bunch.images).float().div_(16.0)
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_val = int(round(len(labels) * DIGITS_VAL_FRACTION))
    split_indices = {"train": order[n_val:], "val": order[:n_val]}
    return images, labels, split_indices


def _digits(resolution, split):
    images, labels, split_indices = _digits_arrays()
    upsampled = _upsample(images, resolution)
    # Statistics of the train split at the final resolution (bilinear upsampling smooths, so the
    # 8x8 statistics would leave the std below 1).
    train = upsampled[split_indices["train"]]
    mean, std = train.mean(), train.std()
    picked = upsampled[split_indices[split]].sub_(mean).div_(std)
    return ImageTensorDataset(picked, labels[split_indices[split]], [str(d) for d in range(10)])


def _upsample(images, resolution):
    images = images.unsqueeze(1)
    if resolution == images.shape[-1]:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear",
                         align_corners=False)


def _image_folder(root, resolution, split, augment):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):  # the argument's own error first, with or without torchvision
        raise ValueError(f"name_or_path: {root!r} has no {split}/ subfolder; expected the "
                         f"ImageFolder layout {root}/{{train,val}}/<class>/<image>")
    _check_same_classes(root)
    try:
        from torchvision import datasets, transforms
    except ImportError as e:
        raise RuntimeError("an ImageFolder dataset needs torchvision: pip install torchvision") from e
    normalise = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if augment:
        steps = [transforms.RandomResizedCrop(resolution), transforms.RandomHorizontalFlip()]
    else:
        # The usual evaluation crop: resize the short side to R * 256/224, then centre-crop R.
        steps = [transforms.Resize(max(resolution, int(round(resolution * 256 / 224)))),
                 transforms.CenterCrop(resolution)]
    transform = transforms.Compose(steps + [transforms.ToTensor(), normalise])
    return datasets.ImageFolder(folder, transform=transform)


def _class_folders(folder):
    # ImageFolder's own rule (find_classes): the sorted subfolders, indexed in that order.
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _check_same_classes(root):
    """ImageFolder numbers each split's classes on its own: train/ and val/ must list the same
    class folders, or val labels silently mean other classes (or exceed the model's outputs)."""
    folders = [os.path.join(root, split) for split in SPLITS]
    if not all(os.path.isdir(folder) for folder in folders):
        return  # the missing split's own load says so
    train, val = (_class_folders(folder) for folder in folders)
    if train != val:
        raise ValueError(f"name_or_path: {root!r}: train/ and val/ must have the same class "
                         f"folders, got train/ {train} and val/ {val}")
