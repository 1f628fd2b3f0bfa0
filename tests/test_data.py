import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from conftest import write_image_folder, write_torchvision_layout
from kd import data
from kd.data import (
    BatchLoader,
    DataError,
    default_data_root,
    load_cifar10,
    random_crop_flip,
    split_train_val,
)


def test_the_suites_cache_folder_is_removed_when_its_process_exits(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import conftest, os; "
                           "print(os.path.isdir(os.environ['KD_CACHE_DIR']))"],
                          cwd=Path(__file__).parent, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_image_folder_layout_decodes_exactly(tmp_path):
    written = write_image_folder(tmp_path / "root", n_train=3, n_test=2)
    loaded = load_cifar10(tmp_path / "root", cache_dir=tmp_path / "cache")
    for split in ("train", "test"):
        images, labels = written[split]
        assert loaded[f"{split}_images"].dtype == torch.uint8
        assert loaded[f"{split}_images"].shape == (len(labels), 3, 32, 32)
        # ImageFolder sorts by class then file name, as written: PNG is lossless.
        assert torch.equal(loaded[f"{split}_images"], images)
        assert torch.equal(loaded[f"{split}_labels"], labels)


def test_jpeg_image_folder_decodes(tmp_path):
    write_image_folder(tmp_path / "root", n_train=2, n_test=1, ext="jpg")
    loaded = load_cifar10(tmp_path / "root", cache_dir=tmp_path / "cache")
    assert loaded["train_images"].shape == (20, 3, 32, 32)


def test_torchvision_layout(tmp_path, monkeypatch):
    # Real CIFAR-10 files pass torchvision's md5 check; synthetic ones cannot.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    written = write_torchvision_layout(tmp_path / "root", n_train=10, n_test=3)
    loaded = load_cifar10(tmp_path / "root", cache_dir=tmp_path / "cache")
    for split in ("train", "test"):
        assert torch.equal(loaded[f"{split}_images"], written[split][0])
        assert torch.equal(loaded[f"{split}_labels"], written[split][1])


def test_cache_is_reused_and_kept_out_of_the_data_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_image_folder(root, n_train=2, n_test=1)
    before = sorted(p for p in root.rglob("*"))
    first = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert sorted(p for p in root.rglob("*")) == before
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(data, "_decode_image_folder", no_decoding)
    # nor hashed again: the cache holds the identity (the full set's hash cost twice the load)
    monkeypatch.setattr(data, "data_identity", no_decoding)
    second = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert torch.equal(first["train_images"], second["train_images"])
    assert second["identity"] == first["identity"]


def test_an_image_rewritten_in_place_is_decoded_again(tmp_path):
    """Rewriting a file leaves its folder's mtime as it was: the cache must still see it."""
    root = tmp_path / "root"
    write_image_folder(root, n_train=2, n_test=1)
    first = load_cifar10(root, cache_dir=tmp_path / "cache")
    image = sorted((root / "train" / "cat").iterdir())[0]
    folder_times = (image.parent.stat().st_atime_ns, image.parent.stat().st_mtime_ns)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    os.utime(image.parent, ns=folder_times)
    second = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert second["identity"]["sha256"] != first["identity"]["sha256"]
    assert (second["train_images"] == torch.tensor([1, 2, 3])[:, None, None]).all(
        dim=(1, 2, 3)).sum() == 1


def test_an_image_in_a_subfolder_of_a_class_is_seen_by_the_cache(tmp_path):
    """ImageFolder reads a class folder's subfolders too: an image added or rewritten there
    must reach the data, not be served from the cache."""
    root = tmp_path / "root"
    write_image_folder(root, n_train=2, n_test=1)
    nested = root / "train" / "cat" / "more"
    nested.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(nested / "extra.png")
    first = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert len(first["train_labels"]) == 21  # ImageFolder's own count, the nested one in
    folder_times = (nested.stat().st_atime_ns, nested.stat().st_mtime_ns)
    Image.new("RGB", (32, 32), (4, 5, 6)).save(nested / "extra.png")
    os.utime(nested, ns=folder_times)
    second = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert second["identity"]["sha256"] != first["identity"]["sha256"]


def test_a_link_loop_in_a_class_folder_neither_breaks_the_fingerprint_nor_changes_what_is_read(
        tmp_path):
    """A link to its own folder in train/cat: ImageFolder (os.walk, following links) reads the
    folder again at every level until the OS refuses the path (ELOOP), and passes over the
    rest; the data fingerprint's os.scandir walk must pass over it likewise instead of
    raising, and the training set loaded is exactly the one ImageFolder reads. Guards against
    _files without either of its `except OSError`."""
    root = tmp_path / "root"
    write_image_folder(root, n_train=2, n_test=1)
    (root / "train" / "cat" / "self").symlink_to(".")
    listing = data._files(root / "train" / "cat", "train/cat")  # raises nothing
    assert len(listing) > 2  # the loop's copies are listed as ImageFolder reads them
    data._fingerprint(root, "imagefolder")  # raises nothing
    loaded = load_cifar10(root, cache_dir=tmp_path / "cache")
    read = torchvision.datasets.ImageFolder(root / "train")
    assert len(read) > 20  # the loop is followed: cat's two images count more than once
    assert len(loaded["train_labels"]) == len(read)
    assert loaded["train_labels"].tolist() == read.targets
    assert len(loaded["test_labels"]) == 10


def test_the_recorded_split_hash_is_the_validation_indices_of_the_split(monkeypatch):
    """split_sha256 hashes the indices split_train_val holds out: another permutation (here
    another seed, as a torch whose randperm draws otherwise would give) another hash."""
    images = torch.arange(200).view(200, 1, 1, 1).expand(200, 3, 32, 32).to(torch.uint8)
    held_out = split_train_val({"train_images": images, "train_labels": torch.arange(200)})[1][1]
    assert data.split_sha256(200) == hashlib.sha256(held_out.numpy().tobytes()).hexdigest()
    monkeypatch.setattr(data, "VAL_SEED", 1)
    assert data.split_sha256(200) != hashlib.sha256(held_out.numpy().tobytes()).hexdigest()


def test_a_failed_download_leaves_none_of_the_folders_it_made(tmp_path, monkeypatch):
    """The default ./data, absent: torchvision makes the folder, then the download fails."""
    def offline(self, *args, **kwargs):
        Path(self.root).mkdir(parents=True, exist_ok=True)
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIFAR10_ROOT", raising=False)
    with pytest.raises(DataError) as e:
        load_cifar10(default_data_root(), cache_dir=tmp_path / "cache")
    assert "download failed" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_mistyped_root_is_refused_without_a_download(tmp_path, monkeypatch):
    """On a machine with a network, a typo in --data-root downloaded the original CIFAR-10
    into a new folder of that name and trained on it: other data than the run was meant for
    (its records would say so, after the training time was spent)."""
    def download(*args, **kwargs):
        raise AssertionError("a download was started")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", download)
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "cifar10-jpg", cache_dir=tmp_path / "cache")
    message = str(e.value)
    assert "cifar-10-batches-py" in message and "train/<class>" in message
    assert "--data-root" in message and "mkdir" in message
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_given_as_root_is_downloaded_into(tmp_path, monkeypatch):
    started = []
    def offline(self, *args, **kwargs):
        started.append(Path(self.root))
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    (tmp_path / "cifar").mkdir()
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "cifar", cache_dir=tmp_path / "cache")
    assert started == [tmp_path / "cifar"] and "download failed" in str(e.value)
    assert (tmp_path / "cifar").is_dir()  # the user's folder stays


def test_wrong_class_folders(tmp_path):
    root = tmp_path / "root"
    write_image_folder(root, n_train=1, n_test=1)
    (root / "train" / "cat").rename(root / "train" / "kitten")
    with pytest.raises(DataError, match="kitten"):
        load_cifar10(root, cache_dir=tmp_path / "cache")


def test_unreadable_image_is_named(tmp_path):
    root = tmp_path / "root"
    write_image_folder(root, n_train=1, n_test=1)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load_cifar10(root, cache_dir=tmp_path / "cache")


def fake_data(n=200):
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 32, 32)
    return {"train_images": images.clone(), "train_labels": torch.arange(n) % 10}


def test_validation_split_is_fixed_and_disjoint():
    d = fake_data(200)
    (train_x, _), (val_x, _) = split_train_val(d)
    (train_x2, _), (val_x2, _) = split_train_val(d)
    assert torch.equal(val_x, val_x2) and len(val_x) == 20 and len(train_x) == 180
    train_ids, val_ids = set(train_x[:, 0, 0, 0].tolist()), set(val_x[:, 0, 0, 0].tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 200
    (subset_x, subset_y), (val_x3, _) = split_train_val(d, train_subset=50)
    assert len(subset_y) == 50 and torch.equal(val_x3, val_x)
    assert torch.equal(subset_x, train_x[:50])


def test_crop_and_flip_match_per_image_slicing_and_mirroring():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.tensor([True, False] * 8)
    out = random_crop_flip(images, 4, dy, dx, flip)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):  # the window at (dy, dx), mirrored left-right (last axis) where asked
        window = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_loader_batches_shapes_dtypes_and_labels_follow_images():
    # Each image is filled with its own index, so after any crop/flip its centre still says
    # which image it is, and the label must be that image's label.
    n = 100
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 32, 32).clone()
    labels = torch.randint(0, 10, (n,))
    loader = BatchLoader(images, labels, 32, shuffle=True, augment=True, seed=1, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    seen = []
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32) and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        ids = (x[:, 0, 16, 16] * 255).round().long()
        assert torch.equal(y, labels[ids])
        seen += ids.tolist()
    assert len(set(seen)) == 96  # a permutation: no image twice in an epoch


def test_the_pixel_conversion_is_the_cpus_true_division_bit_for_bit():
    """The lookup that gives CPU and GPU the same batches keeps the CPU's bits: all 256 values
    (x * (1 / 255), CUDA's way, differs in 126) and a channels_last batch, its layout kept."""
    def bits(x):
        return x.view(torch.int32)
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(bits(data.to_unit_float(pixels)), bits(pixels.float().div(255)))
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    batch = batch.contiguous(memory_format=torch.channels_last)
    converted = data.to_unit_float(batch)
    assert torch.equal(bits(converted), bits(batch.float().div(255)))
    assert converted.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_changes_images_but_not_their_content():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    loader = BatchLoader(images, torch.zeros(64, dtype=torch.long), 64, augment=True)
    x, _ = next(iter(loader))
    changed = (x * 255).round().to(torch.uint8) != images
    assert changed.flatten(1).any(1).float().mean() > 0.8


def test_same_seed_same_batches_other_epoch_other_order():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(64)
    def make(seed):
        return BatchLoader(images, labels, 16, shuffle=True, augment=True, seed=seed)
    a, b, c = make(3), make(3), make(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(iter(a))[1], next(iter(c))[1])
    first = next(iter(a))[1]
    a.set_epoch(1)
    assert not torch.equal(first, next(iter(a))[1])


@pytest.mark.parametrize("augment,drop_last,max_batches", [(True, False, None),
                                                          (True, True, None),
                                                          (False, False, 2)])
def test_gathering_a_whole_epoch_gives_the_per_batch_bits(augment, drop_last, max_batches):
    """A GPU gathers the epoch's augmented images at once, a CPU batch by batch: the same
    batches either way (checked on the CPU, the per-epoch path forced), ragged or dropped
    last batch and max_batches included."""
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    labels = torch.arange(70)
    def make(gather_per_epoch):
        return BatchLoader(images, labels, 16, shuffle=True, augment=augment, seed=5,
                           drop_last=drop_last, max_batches=max_batches, positions=True,
                           gather_per_epoch=gather_per_epoch)
    per_batch, per_epoch = make(False), make(True)
    assert not per_batch.gather_per_epoch and per_epoch.gather_per_epoch
    for loader in (per_batch, per_epoch):
        loader.set_epoch(2)
    batches = list(zip(per_batch, per_epoch, strict=True))
    assert len(batches) == len(per_batch)
    for a, b in batches:
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        assert b[0].is_contiguous(memory_format=torch.channels_last)


def test_loader_max_batches_and_ragged_batches():
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    labels = torch.zeros(10, dtype=torch.long)
    assert [len(y) for _, y in BatchLoader(images, labels, 4)] == [4, 4, 2]
    assert [len(y) for _, y in BatchLoader(images, labels, 4, drop_last=True)] == [4, 4]
    assert [len(y) for _, y in BatchLoader(images, labels, 16, drop_last=True)] == [10]
    assert len(list(BatchLoader(images, labels, 2, max_batches=2))) == 2


def test_about_half_the_images_are_flipped_and_every_offset_drawn():
    n = 4000
    loader = BatchLoader(torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
                         torch.zeros(n, dtype=torch.long), 500, shuffle=True, augment=True)
    _, draws = loader.epoch_draws()
    dy, dx, flips = draws
    assert 0.47 < flips.float().mean() < 0.53  # 4000 fair coins: 3.2 standard deviations
    assert set(dy.tolist()) == set(dx.tolist()) == set(range(9))  # every 4-pixel offset


def test_an_empty_cifar10_root_means_the_default(monkeypatch):
    """`CIFAR10_ROOT= make all` read the empty string as the working folder."""
    monkeypatch.setenv("CIFAR10_ROOT", "")
    assert default_data_root() == data.DOWNLOAD_ROOT
