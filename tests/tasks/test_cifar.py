"""CIFAR loading (ImageFolder and torchvision sources) and the batched, counter-based augmentation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from akd_ray.config import TaskSpec
from akd_ray.tasks.base import Augment
from akd_ray.tasks.cifar import PAD, STATS, CifarInputs, crop_flip, load_cifar_task, read_image_folder

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SUBSET = SHARED / "cifar10-subset"
needs_subset = pytest.mark.skipif(not (SUBSET / "jpg").is_dir(),
                                  reason=f"CIFAR-10 subset not found at {SUBSET / 'jpg'} (shared data absent)")
CPU = torch.device("cpu")


def normalised(x: torch.Tensor, name: str = "cifar10") -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS[name])
    return (x.float() / 255 - mean) / std


def write_folder(root: Path, classes: list[str], per_class: int, size: int = 32,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny lossless ImageFolder tree (PNG): train/ and test/ with `per_class` images per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for part in ("train", "test"):
        for cls in classes:
            (root / part / cls).mkdir(parents=True)
            for i in range(per_class):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(a).save(root / part / cls / f"{i:04d}.png")
                written[f"{part}/{cls}/{i:04d}.png"] = a
    return written


# ---------------------------------------------------------------------------------------- the shared subset
@pytest.fixture(scope="module")
def subset_task():
    if not (SUBSET / "jpg").is_dir():
        pytest.skip(f"CIFAR-10 subset not found at {SUBSET / 'jpg'} (shared data absent)")
    return load_cifar_task(TaskSpec(name="cifar10", data_dir=SUBSET / "jpg", val_fraction=0.1))


@needs_subset
def test_subset_sizes_and_class_balance(subset_task):
    t = subset_task
    assert (len(t.train), len(t.val), len(t.test)) == (4500, 500, 1000)
    assert (t.num_labels, t.metric, t.augments) == (10, "accuracy", True)
    for split in (t.train, t.val, t.test):
        x = split.features["x"]
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and x.device.type == "cpu"
    train_val = torch.cat([t.train.labels, t.val.labels])
    assert torch.bincount(train_val, minlength=10).tolist() == [500] * 10
    assert torch.bincount(t.val.labels, minlength=10).tolist() == [50] * 10  # stratified
    assert torch.bincount(t.test.labels, minlength=10).tolist() == [100] * 10
    assert t.info["classes"].split(",") == ["airplane", "automobile", "bird", "cat", "deer",
                                            "dog", "frog", "horse", "ship", "truck"]
    # val is held out of train: no image in both
    both = torch.cat([t.train.features["x"], t.val.features["x"]]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 5000


@needs_subset
def test_subset_labels_match_manifest():
    with open(SUBSET / "manifest.csv") as f:
        manifest = {row["path"]: int(row["label"]) for row in csv.DictReader(f)}
    x, labels, classes, files = read_image_folder(SUBSET / "jpg" / "test")
    assert len(files) == 1000 and x.shape == (1000, 3, 32, 32)
    for f, y in zip(files, labels.tolist()):
        assert manifest[f.relative_to(SUBSET).as_posix()] == y


@needs_subset
def test_subset_pixels_match_lossless_originals():
    """Decoding keeps orientation and RGB order: the JPEGs are within JPEG error of the PNG originals."""
    from PIL import Image

    x, _, _, files = read_image_folder(SUBSET / "jpg" / "test")
    names = [f.relative_to(SUBSET / "jpg" / "test").as_posix() for f in files]
    # README: test/cat/0000 is test image #0, ship/0000 #1, airplane/0000 #3
    for jpg, png in [("cat/0000.jpg", "cifar10_00_3.png"), ("ship/0000.jpg", "cifar10_01_8.png"),
                     ("airplane/0000.jpg", "cifar10_03_0.png")]:
        ref = torch.from_numpy(np.array(Image.open(SUBSET / "foolbox-test20-png" / png).convert("RGB")))
        err = (x[names.index(jpg)].int() - ref.permute(2, 0, 1).int()).abs().float().mean()
        assert err < 10, (jpg, err)


@needs_subset
def test_subset_max_samples():
    t = load_cifar_task(TaskSpec(name="cifar10", data_dir=SUBSET / "jpg",
                                 max_train_samples=300, max_eval_samples=200))
    assert (len(t.train), len(t.val), len(t.test)) == (300, 200, 200)


@needs_subset
def test_subset_views_depend_on_seed_epoch_index_only(subset_task):
    t = subset_task
    a_idx, b_idx = torch.tensor([3, 7, 11, 42]), torch.tensor([42, 100, 3])
    a, _ = t.batch(t.train, a_idx, CPU, Augment(seed=5, epoch=2, indices=a_idx))
    b, _ = t.batch(t.train, b_idx, CPU, Augment(seed=5, epoch=2, indices=b_idx))
    assert torch.equal(a["x"][0], b["x"][2]) and torch.equal(a["x"][3], b["x"][0])
    again, _ = t.batch(t.train, a_idx, CPU, Augment(seed=5, epoch=2, indices=a_idx))
    assert torch.equal(a["x"], again["x"])
    for other in (Augment(seed=5, epoch=3, indices=a_idx), Augment(seed=6, epoch=2, indices=a_idx)):
        c, _ = t.batch(t.train, a_idx, CPU, other)
        assert not torch.equal(a["x"], c["x"])


# ---------------------------------------------------------------------------------------- augmentation
def test_crop_flip_hand_built():
    img = torch.arange(1, 10, dtype=torch.uint8).view(1, 1, 3, 3)  # 1..9, row-major
    x = img.expand(4, 1, 3, 3)
    offsets = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 2]])
    flip = torch.tensor([False, False, True, False])
    out = crop_flip(x, offsets, flip, pad=1)
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # window at the padded top-left
    assert out[1, 0].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # centred: the image itself
    assert out[2, 0].tolist() == [[0, 6, 5], [0, 9, 8], [0, 0, 0]]  # crop, then flip
    assert out[3, 0].tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]  # row 0, column 2


def test_crop_flip_keeps_channels_together():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    offsets, flip = torch.tensor([[1, 3], [4, 0]]), torch.tensor([True, False])
    out = crop_flip(x, offsets, flip, pad=2)
    ref = F.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], ref[0, :, 1:5, 3:7].flip(-1))
    assert torch.equal(out[1], ref[1, :, 4:8, 0:4])


def test_to_inputs_augmented_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    idx = torch.arange(100, 116)
    aug = Augment(seed=1, epoch=4, indices=idx)
    out = CifarInputs("cifar100")({"x": x}, aug)["x"]
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    u = aug.uniform(3, CPU)
    padded = F.pad(x, (PAD,) * 4)
    for i in range(len(x)):  # the slow, obvious way, one sample at a time
        r, c = int(u[i, 0] * 9), int(u[i, 1] * 9)
        view = padded[i, :, r:r + 32, c:c + 32]
        if u[i, 2] < 0.5:
            view = view.flip(-1)
        torch.testing.assert_close(out[i], normalised(view[None], "cifar100")[0])


def test_draws_cover_all_offsets_and_flip_half():
    idx = torch.arange(20_000)
    u = Augment(seed=0, epoch=0, indices=idx).uniform(3, CPU)
    offsets = (u[:, :2] * (2 * PAD + 1)).long()
    for k in range(2):
        counts = torch.bincount(offsets[:, k], minlength=9)
        assert len(counts) == 9 and counts.min() > 20_000 / 9 * 0.85
    assert 0.47 < (u[:, 2] < 0.5).float().mean() < 0.53


def test_no_augment_is_just_normalisation():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = CifarInputs("cifar10")({"x": x}, None)["x"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, normalised(x))
    # task.augment: false -> training batches are only normalised too
    off = CifarInputs("cifar10", augment=False)({"x": x}, Augment(seed=0, epoch=1, indices=torch.arange(5)))
    torch.testing.assert_close(off["x"], normalised(x))


# ---------------------------------------------------------------------------------------- sources, offline
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_image_folder_roundtrip(tmp_path):
    written = write_folder(tmp_path, CIFAR10_CLASSES, per_class=4)
    t = load_cifar_task(TaskSpec(name="cifar10", data_dir=tmp_path, val_fraction=0.25, augment=False))
    assert (len(t.train), len(t.val), len(t.test)) == (30, 10, 40) and t.augments is False
    x, labels, classes, files = read_image_folder(tmp_path / "test")
    assert classes == CIFAR10_CLASSES and labels.tolist() == [i // 4 for i in range(40)]
    for i, f in enumerate(files):  # PNG is lossless: exact pixels, channels first
        assert torch.equal(x[i], torch.from_numpy(written[f.relative_to(tmp_path).as_posix()]).permute(2, 0, 1))
    assert torch.equal(t.test.features["x"], x)


def test_image_folder_errors(tmp_path):
    write_folder(tmp_path / "two", ["a", "b"], per_class=1)
    with pytest.raises(ValueError, match="10 classes, found 2"):
        load_cifar_task(TaskSpec(name="cifar10", data_dir=tmp_path / "two"))
    write_folder(tmp_path / "big", CIFAR10_CLASSES, per_class=1, size=33)
    with pytest.raises(ValueError, match="expected a 32x32 image"):
        load_cifar_task(TaskSpec(name="cifar10", data_dir=tmp_path / "big"))
    with pytest.raises(FileNotFoundError, match="train/<class>/"):
        load_cifar_task(TaskSpec(name="cifar10", data_dir=tmp_path / "missing"))


def test_image_folder_decoded_once_into_the_cache(tmp_path, monkeypatch):
    import akd_ray.tasks.cifar as cifar

    write_folder(tmp_path / "data", CIFAR10_CLASSES, per_class=3)  # random pixels: a zero image is surely new
    spec = TaskSpec(name="cifar10", data_dir=tmp_path / "data", val_fraction=0.2)
    decoded = []
    real = cifar.decode_images
    monkeypatch.setattr(cifar, "decode_images", lambda files: decoded.append(len(files)) or real(files))
    plain = load_cifar_task(spec)  # no cache: decodes train and test
    first = load_cifar_task(spec, tmp_path / "cache")
    again = load_cifar_task(spec, tmp_path / "cache")  # reads the tensor file, decodes nothing
    assert decoded == [30, 30, 30, 30]
    assert len(list((tmp_path / "cache" / "images").glob("cifar10-*.pt"))) == 1
    for a, b, c in zip((plain.train, plain.val, plain.test), (first.train, first.val, first.test),
                       (again.train, again.val, again.test)):
        assert torch.equal(a.features["x"], b.features["x"]) and torch.equal(a.features["x"], c.features["x"])
        assert torch.equal(a.labels, c.labels)

    # an image rewritten in place (new bytes, size or mtime): the tree is decoded again, not served stale
    from PIL import Image
    target = tmp_path / "data" / "test" / "cat" / "0001.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(target)
    fresh = load_cifar_task(spec, tmp_path / "cache")
    assert decoded == [30, 30, 30, 30, 30, 30]
    i = CIFAR10_CLASSES.index("cat") * 3 + 1
    assert int(fresh.test.features["x"][i].sum()) == 0 and int(again.test.features["x"][i].sum()) > 0


def test_image_folder_cache_through_load_task(tmp_path):
    from akd_ray.tasks import load_task

    write_folder(tmp_path / "data", CIFAR10_CLASSES, per_class=2)
    load_task(TaskSpec(name="cifar10", data_dir=tmp_path / "data"), cache_dir=tmp_path / "cache")
    assert [f.name.split("-")[0] for f in (tmp_path / "cache" / "images").glob("*.pt")] == ["cifar10"]


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10: `.data` (N, 32, 32, 3) uint8, `.targets`, `.classes`."""
    classes = CIFAR10_CLASSES

    def __init__(self, root: str, train: bool, download: bool):
        n = 200 if train else 50
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]


def test_torchvision_source(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    t = load_cifar_task(TaskSpec(name="cifar10", download_dir=tmp_path / "dl"))
    assert (len(t.train), len(t.val), len(t.test)) == (180, 20, 50)
    ref = FakeCIFAR10("", train=False, download=True)
    assert torch.equal(t.test.features["x"], torch.from_numpy(ref.data).permute(0, 3, 1, 2))
    assert t.test.labels.tolist() == ref.targets and t.info["classes"].split(",") == CIFAR10_CLASSES


def test_torchvision_download_failure_is_clear(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    class Offline:
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Offline)
    with pytest.raises(RuntimeError, match="could not download cifar100 .*task.data_dir"):
        load_cifar_task(TaskSpec(name="cifar100", download_dir=tmp_path))


def test_to_inputs_pickles():
    import pickle

    fn = pickle.loads(pickle.dumps(CifarInputs("cifar10")))
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    torch.testing.assert_close(fn({"x": x}, None)["x"], normalised(x))



def test_an_unlabelled_image_folder_joins_train_without_labels(tmp_path):
    from akd_ray.tasks import load_task

    write_folder(tmp_path / "tree", CIFAR10_CLASSES, per_class=4)
    extra = write_folder(tmp_path / "extra", ["any"], per_class=3, seed=1)  # extra/train/any, extra/test/any
    t = load_task(TaskSpec(name="cifar10", data_dir=tmp_path / "tree", val_fraction=0.25,
                           unlabelled=tmp_path / "extra", labelled_samples=10))
    assert len(t.train) == 30 + 6 and t.train.labels[30:].tolist() == [-1] * 6
    assert t.train.labelled.sum() == 10 and not t.train.labelled[30:].any()
    first = torch.from_numpy(extra["test/any/0000.png"]).permute(2, 0, 1)  # sorted paths: test/ before train/
    assert torch.equal(t.train.features["x"][30], first)
