"""CIFAR-10 and CIFAR-100 as uint8 tensors, with batched pad-4 crop + flip on the device (airbench-style).

Two sources:
- `task.data_dir` set: a local ImageFolder tree `train/<class>/*` and `test/<class>/*` (any format
  PIL reads), e.g. `../shared/data/cifar10-full/cifar10-jpg.tar.xz` unpacked. Class folders in
  alphabetical order are the label ids, which is the official order for both CIFAR-10 and CIFAR-100.
  With a `cache_dir` (the study's cache) the images are decoded once into one uint8 tensor file,
  `<cache>/images/<name>-<key>.pt`, by one process under the cache's file lock
  (akd_ray.cache.tensors_once): every later trial, teacher and node reads 184 MB of tensors instead
  of decoding 60,000 JPEGs. The key hashes each file's path, size and mtime, so an edited tree is
  decoded again. Without a cache_dir every load decodes (6,000 JPEGs: about 1 s).
- `task.data_dir` None: torchvision's CIFAR10/CIFAR100 downloaded into `task.download_dir`.

Validation is held out of the official training split (stratified, fixed seed so every trial and
teacher sees the same split); the official test split is the reported set.

Augmentation is the papers' (TAKD, Annealing-KD: torchvision `RandomCrop(32, padding=4)` then
`RandomHorizontalFlip()`): zero padding in pixel space (black borders, before normalisation), a
random 32x32 window of the 40x40 padded image, then a horizontal flip with probability 1/2. The
offsets and the flip come from `Augment.uniform`, so a view depends on (seed, epoch, sample index)
only, never on the batch it lands in.
"""

from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from akd_ray.cache import tensors_once
from akd_ray.config import TaskSpec
from akd_ray.tasks.base import Augment, Inputs, Split, TaskData, split_off, take, with_unlabelled

PAD = 4  # pixels of zero padding on each side before the random crop
# per-channel mean and std of the training images in [0, 1]
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
VAL_SEED = 0  # the validation split never moves with the run seed: teacher caches stay valid
SAMPLE_SEED = 0  # which samples max_train_samples / max_eval_samples keep


def load_cifar_task(spec: TaskSpec, cache_dir: Path | None = None) -> TaskData:
    """`cache_dir`: the study's cache, where an ImageFolder's decoded images are kept (None: decode)."""
    if spec.name not in NUM_CLASSES:
        raise ValueError(f"load_cifar_task handles cifar10 and cifar100, not {spec.name!r}")
    if spec.data_dir is not None:
        (train, test), classes = _from_image_folder(Path(spec.data_dir).expanduser(), spec.name, cache_dir)
        source = str(spec.data_dir)
    else:
        (train, test), classes = _from_torchvision(spec.name, Path(spec.download_dir).expanduser())
        source = f"torchvision:{spec.download_dir}"
    train, val = split_off(train, spec.val_fraction, seed=VAL_SEED)
    train = take(train, spec.max_train_samples, seed=SAMPLE_SEED)
    if spec.unlabelled is not None:  # extra unlabelled images follow the training rows
        train = with_unlabelled(train, {"x": decode_images(unlabelled_images(Path(spec.unlabelled)))})
    return TaskData(
        name=spec.name, num_labels=NUM_CLASSES[spec.name], metric="accuracy",
        train=train,
        val=take(val, spec.max_eval_samples, seed=SAMPLE_SEED),
        test=take(test, spec.max_eval_samples, seed=SAMPLE_SEED),
        to_inputs=CifarInputs(spec.name, spec.augment), augments=spec.augment,
        info={"classes": ",".join(classes), "source": source},
    )


# ---------------------------------------------------------------------------------------- on the device
class CifarInputs:
    """`TaskData.to_inputs`: uint8 (B, 3, H, W) -> {"x": normalised float32, channels_last}.

    A plain class (not a closure) so the task pickles into Ray workers. With `augment=False`
    (task.augment off) training batches are only normalised, whatever the worker passes.
    """

    def __init__(self, name: str, augment: bool = True):
        self.name, self.augment = name, augment

    def __call__(self, feats: dict[str, torch.Tensor], augment: Augment | None) -> Inputs:
        x = feats["x"]
        if augment is not None and self.augment:
            u = augment.uniform(3, x.device)  # (B, 3): row offset, column offset, flip
            offsets = (u[:, :2] * (2 * PAD + 1)).long()  # 0 .. 2*PAD, each equally likely
            x = crop_flip(x, offsets, u[:, 2] < 0.5, PAD)
        x = x.contiguous(memory_format=torch.channels_last)  # reorder while still uint8: 4x fewer bytes
        scale, shift = _affine(self.name, x.device)
        x = torch.addcmul(shift, x.float(), scale)  # (x / 255 - mean) / std in one pass; keeps the layout
        return {"x": x.contiguous(memory_format=torch.channels_last)}  # a no-op unless the layout was lost


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample crops of the zero-padded images, then per-sample horizontal flips; one gather.

    x: (B, C, H, W); offsets: (B, 2) ints in [0, 2*pad], the (row, column) of the window's top-left
    corner in the padded (H + 2*pad, W + 2*pad) image; flip: (B,) bool. Returns (B, C, H, W).
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # zeros
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = offsets[:, 1, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (B, W)
    return padded[torch.arange(b, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


@functools.lru_cache(maxsize=None)
def _affine(name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, 3, 1, 1) on `device`: normalised = pixel * scale + shift."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in STATS[name])
    return (1 / (255 * std)).to(device), (-mean / std).to(device)


# ---------------------------------------------------------------------------------------- sources
def _from_image_folder(root: Path, name: str, cache_dir: Path | None = None) -> tuple[tuple[Split, Split], list[str]]:
    listed = {part: list_image_folder(root / part) for part in ("train", "test")}
    if listed["train"][0] != listed["test"][0]:
        raise ValueError(f"{root}: train/ and test/ have different class folders")
    classes = listed["train"][0]
    if len(classes) != NUM_CLASSES[name]:
        raise ValueError(f"{root}: {name} has {NUM_CLASSES[name]} classes, found {len(classes)} class folders")

    def decode() -> dict:
        return {"key": key, **{f"{part}_x": decode_images(files) for part, (_, files, _) in listed.items()}}

    key = folder_key(name, root, [f for _, files, _ in listed.values() for f in files])
    if cache_dir is None:
        images = decode()
    else:
        n = {part: len(files) for part, (_, files, _) in listed.items()}
        images = tensors_once(Path(cache_dir) / "images" / f"{name}-{key}.pt", decode,
                              valid=lambda s: s.get("key") == key and all(len(s[f"{p}_x"]) == n[p] for p in n))
    splits = tuple(Split({"x": images[f"{part}_x"]}, torch.tensor(labels, dtype=torch.int64))
                   for part, (_, _, labels) in listed.items())
    return splits, classes


def folder_key(name: str, root: Path, files: list[str]) -> str:
    """Identity of an image tree as decoded: every file's path under `root`, size and mtime (a stat, no read)."""
    h = hashlib.sha256(name.encode())
    skip = len(str(root)) + 1
    for f in files:
        st = os.stat(f)
        h.update(f"{f[skip:]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def list_image_folder(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """An ImageFolder tree -> (class names, file paths, labels), sorted by class then file name.

    Paths stay strings: 60,000 pathlib objects cost seconds, more than reading the decoded tensors.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (task.data_dir needs train/<class>/ and test/<class>/)")
    classes = sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, cls in enumerate(classes):
        members = sorted(e.path for e in os.scandir(folder / cls) if e.is_file() and not e.name.startswith("."))
        files += members
        labels += [label] * len(members)
    if not files:
        raise ValueError(f"{folder}: no images in class folders")
    return classes, files, labels


def decode_images(files: list[str] | list[Path]) -> torch.Tensor:
    """Image files -> uint8 (N, 3, 32, 32), in order. Threads: Pillow releases the GIL while it decodes."""
    from PIL import Image

    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)

    def one(i: int) -> None:
        with Image.open(files[i]) as im:
            a = np.asarray(im.convert("RGB"))
        if a.shape != (32, 32, 3):
            raise ValueError(f"{files[i]}: expected a 32x32 image, got {a.shape[1]}x{a.shape[0]}")
        images[i] = a

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(files)), chunksize=256))  # list(): re-raises a worker's error here
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def unlabelled_images(folder: Path) -> list[str]:
    """`task.unlabelled` for CIFAR: the image files of a folder (its subfolders too, any names), sorted."""
    files = sorted(str(f) for f in Path(folder).rglob("*") if f.is_file() and not f.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: no images (task.unlabelled: a folder of 32x32 images)")
    return files


def read_image_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], list[Path]]:
    """An ImageFolder tree -> (uint8 (N, 3, 32, 32), int64 labels, class names, files), sorted by class then file."""
    classes, files, labels = list_image_folder(folder)
    return decode_images(files), torch.tensor(labels, dtype=torch.int64), classes, [Path(f) for f in files]


def _from_torchvision(name: str, root: Path) -> tuple[tuple[Split, Split], list[str]]:
    import torchvision
    from filelock import FileLock  # concurrent trials must not download into the same folder at once

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    splits = []
    with FileLock(str(root / f".{name}.lock")):
        for train in (True, False):
            try:
                ds = cls(root=str(root), train=train, download=True)
            except Exception as e:  # urllib/SSL/integrity errors: say what to do instead
                raise RuntimeError(
                    f"could not download {name} into {root} ({type(e).__name__}: {e}). Without internet, put "
                    f"the official archive ({getattr(cls, 'filename', '.tar.gz')}) there, or set task.data_dir "
                    f"to a local ImageFolder copy (train/<class>/*, test/<class>/*)") from e
            x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
            splits.append(Split({"x": x}, torch.tensor(ds.targets, dtype=torch.int64)))
    return (splits[0], splits[1]), list(ds.classes)
