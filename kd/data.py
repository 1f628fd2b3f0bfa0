"""CIFAR-10 as uint8 tensors, a fixed validation split, and a loader that augments whole
batches with tensor ops on the training device.

The images are decoded once and cached (in the project's ignored `.cache/`, never in the
data root); after that a run starts in about a second and no PIL work happens in training.
"""
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from kd.checkpoints import save_cache

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
# Decoded-tensor cache; KD_CACHE_DIR moves it (the tests point it at a temporary folder).
CACHE_DIR = Path(os.environ.get("KD_CACHE_DIR", Path(__file__).resolve().parents[1] / ".cache"))
VAL_SIZE = 5000  # images held out of the 50k training set for every choice made in training
TRAIN_SIZE = 50_000 - VAL_SIZE  # CIFAR-10's training images that train
VAL_SEED = 0  # fixed, independent of --seed: every run validates on the same images
CROP_PADDING = 4  # pixels of zero padding before the random 32x32 crop


class DataError(ValueError):
    """The data root is missing, empty, or not CIFAR-10."""


DOWNLOAD_ROOT = "./data"  # the default root, where torchvision may download CIFAR-10


def default_data_root():
    return os.environ.get("CIFAR10_ROOT") or DOWNLOAD_ROOT


def load_cifar10(root, cache_dir=CACHE_DIR):
    """Return {"train_images", "train_labels", "test_images", "test_labels"}: uint8 NCHW images
    and int64 labels, from torchvision's layout or an ImageFolder root (train/ and test/),
    and "identity": the layout and a SHA-256 of every image and label in load order, which
    runs record, so that two runs on different data (or on the same images in another
    order, which moves the validation split) can never be compared or distilled unawares."""
    root = Path(root).expanduser()
    layout = _detect_layout(root)
    if layout is None:
        _download_or_fail(root) if _may_download(root) else _refuse(root)
        layout = "torchvision"
    fingerprint = _fingerprint(root, layout)
    root_id = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"cifar10-{root_id}.pt"
    if cache.is_file():
        try:
            cached = torch.load(cache, weights_only=True)
            if cached.get("fingerprint") == fingerprint:
                data = cached["data"]
                if "identity" not in data:  # an older cache
                    data["identity"] = data_identity(data, layout)
                return data
        except Exception:  # a stale or truncated cache is rebuilt, never trusted
            pass
    data = _decode_torchvision(root) if layout == "torchvision" else _decode_image_folder(root)
    data["identity"] = data_identity(data, layout)
    save_cache({"fingerprint": fingerprint, "data": data}, cache, "the decoded images")
    return data


def data_identity(data, layout):
    """The layout and a SHA-256 of the images and labels, in order (not of file dates)."""
    digest = hashlib.sha256()
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        digest.update(data[key].contiguous().numpy().tobytes())
    return {"layout": layout, "sha256": digest.hexdigest()}


def _detect_layout(root):
    if (root / "cifar-10-batches-py").is_dir():
        return "torchvision"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder"
    return None


def _torchvision():
    """torchvision, imported on first use: importing it (it pulls in torch._dynamo) takes a
    script longer than importing torch, and only decoding or downloading the images needs it,
    not a run whose images come from the cache."""
    import torchvision
    return torchvision


def _may_download(root):
    """Into the default root, or a folder made empty for it; never into a mistyped path,
    where the original CIFAR-10 would be trained on in place of the data meant."""
    if root.resolve() == Path(DOWNLOAD_ROOT).resolve():
        return True
    return root.is_dir() and not any(root.iterdir())


def _not_found(root):
    return (f"no CIFAR-10 at {root.resolve()} (looked for {root}/cifar-10-batches-py/ and for "
            f"{root}/train/<class>/ + {root}/test/<class>/)")


def _refuse(root):
    raise DataError(
        f"{_not_found(root)}. Fix: pass --data-root (or set CIFAR10_ROOT) to a folder with "
        f"either layout, e.g. ../shared/data/cifar10-jpeg; to download CIFAR-10 there, "
        f"`mkdir -p {root}` first")


def _download_or_fail(root):
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        _torchvision().datasets.CIFAR10(root, train=True, download=True)
    except Exception as e:  # no network, a proxy, a full disk: all end in the same advice
        for folder in created:  # the download's folders, deepest first, as long as empty
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise DataError(
            f"{_not_found(root)} and the download failed ({type(e).__name__}). Fix: pass "
            f"--data-root (or set CIFAR10_ROOT) to a folder with either layout, e.g. "
            f"../shared/data/cifar10-jpeg, or run once where torchvision can download "
            f"CIFAR-10 into {root}") from None


def _fingerprint(root, layout):
    """Cheap identity of the data on disk: names, sizes and mtimes of its files (an ImageFolder
    root's every image: a file rewritten in place leaves its folder's mtime as it was), as a
    SHA-256 of that listing. A class folder's subfolders are listed too, as ImageFolder reads
    them (following links)."""
    if layout == "torchvision":
        folders = [root / "cifar-10-batches-py"]
    else:
        folders = [p for split in ("train", "test") for p in sorted((root / split).iterdir())
                   if p.is_dir()]
    listing = []
    for folder in folders:
        listing += _files(folder, str(folder.relative_to(root)))
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def _files(folder, name):
    """(path under `name`, size, mtime) of every file in `folder` and below, sorted. By hand
    with os.scandir, which lists 60,000 files faster than os.walk with a stat by path."""
    listing = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # unreadable, or a link loop too deep: os.walk (ImageFolder's) skips it
        return listing
    for entry in entries:
        try:
            if entry.is_dir():
                listing += _files(entry.path, f"{name}/{entry.name}")
            elif entry.is_file():
                stat = entry.stat()
                listing.append((f"{name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
        except OSError:  # a link too deep in a loop, or gone: os.walk passes it over too
            continue
    return listing


def _decode_torchvision(root):
    data = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = _torchvision().datasets.CIFAR10(root, train=train, download=False)
        except RuntimeError as e:
            raise DataError(f"{root}/cifar-10-batches-py is incomplete or corrupted "
                            f"({e})") from None
        data[f"{split}_images"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        data[f"{split}_labels"] = torch.tensor(ds.targets, dtype=torch.int64)
    return data


def _decode_image_folder(root):
    data = {}
    for split in ("train", "test"):
        folder = root / split
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if found != list(CLASSES):
            raise DataError(f"{folder} must hold one folder per CIFAR-10 class {list(CLASSES)}; "
                            f"found {found}")
        try:
            samples = _torchvision().datasets.ImageFolder(folder).samples
        except FileNotFoundError as e:
            raise DataError(f"{folder}: {e}") from None
        images = np.empty((len(samples), 32, 32, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(tqdm(samples, desc=f"decoding {split}", unit="img",
                                           leave=False, mininterval=1.0)):
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, SyntaxError, ValueError):  # what PIL raises for a broken file
                raise DataError(f"cannot decode image {path}") from None
            if pixels.shape != (32, 32, 3):
                raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, CIFAR-10 "
                                f"images are 32x32")
            images[i] = pixels
        data[f"{split}_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        data[f"{split}_labels"] = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return data


def split_train_val(data, train_subset=None):
    """Hold out a fixed validation split of the training set; optionally keep only the first
    `train_subset` of the remaining training images. Returns (train, val) as (images, labels)."""
    val_idx, train_idx = split_indices(len(data["train_labels"]))
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    pick = lambda idx: (data["train_images"][idx], data["train_labels"][idx])  # noqa: E731
    return pick(train_idx), pick(val_idx)


def split_indices(n):
    """(validation, training) indices of a training set of `n` images: a fixed permutation."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    val_size = min(VAL_SIZE, n // 10)
    return order[:val_size], order[val_size:]


def split_sha256(n):
    """SHA-256 of the validation indices split_indices draws for `n` images, which runs
    record: the images' hash cannot see a torch whose randperm draws another permutation,
    which would move the split (and the runs' validation images into training) unseen."""
    return hashlib.sha256(split_indices(n)[0].numpy().tobytes()).hexdigest()


def random_crop_flip(images, padding, dy, dx, flip):
    """Per-image translation and mirroring in one gather: zero-pad, then take the 32x32 window
    at offsets (dy, dx), its columns reversed where the boolean `flip` is set. Gathered in
    NHWC order, so the result is already channels_last (the layout the loader hands on): one
    pass over the batch instead of a crop, a flip, a select and a layout copy."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding,) * 4).permute(0, 2, 3, 1)  # a view: N, H, W, C
    columns = torch.arange(w, device=dev)
    columns = torch.where(flip[:, None], columns.flip(0), columns)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (dx[:, None] + columns)[:, None, :]
    return padded[torch.arange(b, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def to_unit_float(images):
    """uint8 pixels as float32 in [0, 1], with the same bits on every device: looked up in a
    table of the 256 quotients p / 255, divided once on the CPU. CUDA divides a tensor by a
    scalar as a product with the reciprocal, 1 bit off the CPU's true division for 126 of
    the 256 values, so CPU and GPU batches would differ."""
    return _unit_table(images.device)[images.int()]


@functools.cache
def _unit_table(device):
    return (torch.arange(256, dtype=torch.uint8).float() / 255).to(device)


def gathers_per_epoch(device):
    """The loader's default on `device`. On a GPU one gather of the whole epoch's augmented
    images (uint8, ~140 MB at 45,000) replaces a pad, an index and a copy per batch; on a
    CPU the per-batch gather stays in cache and allocates 140 MB less. Either way the
    batches are the same bits."""
    return torch.device(device).type == "cuda"


class BatchLoader:
    """Batches of (float images in [0, 1], labels) from uint8 tensors held on `device`; with
    `positions`, (images, labels, each image's position in `images`).

    Shuffling and augmentation draw from a CPU generator seeded by (seed, epoch), so a given
    epoch yields the same batches whether or not the run was interrupted before it, and on
    any device.
    """

    def __init__(self, images, labels, batch_size, device="cpu", shuffle=False, augment=False,
                 seed=0, drop_last=False, max_batches=None,
                 memory_format=torch.channels_last, positions=False, gather_per_epoch=None):
        self.device = torch.device(device)
        self.gather_per_epoch = (gathers_per_epoch(self.device) if gather_per_epoch is None
                                 else gather_per_epoch)
        # channels_last: the layout oneDNN and cuDNN convolutions run fastest in (the
        # benchmark compares it with contiguous NCHW).
        self.memory_format = memory_format
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.positions = positions
        # drop_last keeps a ragged last batch (e.g. of 1 image) from upsetting BatchNorm.
        n = len(self.labels)
        self.num_batches = n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)
        if max_batches is not None:
            self.num_batches = min(self.num_batches, max_batches)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        order, draws = self.epoch_draws()
        used = slice(0, self.num_batches * self.batch_size)
        if self.gather_per_epoch:
            epoch_images = self.images[order[used]]
            if self.augment:
                epoch_images = random_crop_flip(epoch_images, CROP_PADDING, *draws)
        for i in range(self.num_batches):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[batch]
            if self.gather_per_epoch:
                images = epoch_images[batch]
            else:
                images = self.images[idx]
                if self.augment:
                    images = random_crop_flip(images, CROP_PADDING, *(d[batch] for d in draws))
            images = to_unit_float(images).contiguous(memory_format=self.memory_format)
            labels = self.labels[idx]
            yield (images, labels, idx) if self.positions else (images, labels)

    def epoch_draws(self):
        """This epoch's image order and augmentation (crop offsets dy, dx and flips), on
        `device`. Drawn on the CPU whatever the device, and all at once: the same seed gives
        the same batches on a CPU and a GPU, and a GPU gets them in one copy per epoch, not
        a host round trip per batch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if not self.augment:
            return order.to(self.device), None
        span = 2 * CROP_PADDING + 1
        dy, dx, flip = [], [], []
        for i in range(self.num_batches):  # per batch, in the order the draws were always made
            b = len(order[i * self.batch_size:(i + 1) * self.batch_size])
            dy.append(torch.randint(0, span, (b,), generator=generator))
            dx.append(torch.randint(0, span, (b,), generator=generator))
            flip.append(torch.rand(b, generator=generator) < 0.5)
        return order.to(self.device), [torch.cat(d).to(self.device) for d in (dy, dx, flip)]
