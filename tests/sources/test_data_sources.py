"""Data sources: image folders (class subfolders or train/val/test), a user's Dataset or
dict of them, DataLoaders through the API; the model's own preprocessing (timm, hf:, given
explicitly); streamed measuring equal to in-memory; every bad input one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import USER_MODEL_CODE, run_cli, save_tiny_hf_vit, write_images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shapprune.criteria.registry import get_criterion
from shapprune.data import DatasetSplits, Split, as_splits, as_tensors, reference_set, split_size
from shapprune.evaluation.measure import evaluate, measure
from shapprune.pruning.compress import prune_model
from shapprune.sources.data import DATA_SOURCES, load_data, register_data_source
from shapprune.sources.folders import ImageFiles
from shapprune.sources.models import load_model
from shapprune.sources.preprocessing import Preprocessing

CLASSES = ("cat", "dog", "emu")
PRE = {"image_size": 12, "mean": (0.5,), "std": (0.25,)}
TINY = ["--criterion", "weight-l1", "--refine", "0", "--per-class", "2", "--target",
        "macs=0.3", "--device", "cpu", "--compensate", "no", "--per-layer"]  # fmt: skip
USER_RGB_CODE = """
import torch
from torch import nn

class RGBNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.relu(self.conv1(x)).mean((2, 3)))
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_rgb(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    ).eval()  # fmt: skip


# --- folders ---------------------------------------------------------------------------------


def test_a_folder_of_class_subfolders_is_split_and_streamed(tmp_path, monkeypatch):
    folder = write_images(tmp_path / "pets", per_class=20)
    splits = load_data(str(folder), model=tiny_rgb(), preprocessing=PRE, seed=0)
    assert splits.classes == CLASSES and splits.num_classes == 3
    assert isinstance(splits.val, ImageFiles)  # streamed: nothing decoded yet
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 6, 6)
    files = {str(f) for s in (splits.train, splits.val, splits.test) for f in s.files}
    assert len(files) == 60  # disjoint
    assert splits.in_channels == 3 and splits.preprocessing["mean"] == [0.5] * 3
    decoded = []
    original = ImageFiles.__getitem__
    monkeypatch.setattr(ImageFiles, "__getitem__",
                        lambda self, i: decoded.append(i) or original(self, i))  # fmt: skip
    ref = reference_set(splits.val, per_class=2, seed=1)
    assert len(decoded) == 6  # only the reference examples were decoded
    assert ref.y.tolist() == [0, 0, 1, 1, 2, 2] and ref.x.shape == (6, 3, 12, 12)
    again = load_data(f"imagefolder:{folder}", model=tiny_rgb(), preprocessing=PRE, seed=0)
    assert again.val.files == splits.val.files  # the alias, the same seeded split


def test_a_folder_with_train_val_test_gives_its_own_splits(tmp_path):
    for part, n in (("train", 4), ("val", 3), ("test", 2)):
        write_images(tmp_path / "data" / part, per_class=n, seed=len(part))
    splits = load_data(str(tmp_path / "data"), model=tiny_rgb(), preprocessing=PRE)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 9, 6)
    assert all("/val/" in str(f) for f in splits.val.files)
    assert sorted(set(splits.test.targets)) == [0, 1, 2]


def test_preprocessing_resizes_crops_converts_and_normalises(tmp_path):
    from PIL import Image

    image = Image.fromarray(np.full((20, 30, 3), 255, np.uint8))
    pre = Preprocessing(8, (0.5, 0.25, 0.5), (0.5, 0.25, 0.25), resize=10)
    x = pre(image)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 3.0, 2.0]))
    grey = pre.for_channels(1)(image)  # colour to a grey model: one channel, averaged stats
    expected = (1 - np.mean(pre.mean)) / np.mean(pre.std)
    assert grey.shape == (1, 8, 8) and torch.allclose(grey, torch.full_like(grey, expected))
    black = Image.fromarray(np.zeros((5, 5), np.uint8))
    one = Preprocessing(4, (0.5,), (0.5,)).for_channels(3)(black)
    assert one.shape == (3, 4, 4) and torch.all(one == -1.0)  # grey to colour


def test_grey_images_feed_an_rgb_model_and_colour_a_grey_one(tmp_path):
    grey = write_images(tmp_path / "grey", per_class=10, mode="L")
    splits = load_data(str(grey), model=tiny_rgb(), preprocessing=PRE)
    assert reference_set(splits.val, 1, seed=0).x.shape[1] == 3
    colour = write_images(tmp_path / "colour", per_class=10)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    conv(torch.zeros(1, 1, 12, 12))
    splits = load_data(str(colour), model=conv.eval(), preprocessing=PRE)
    assert reference_set(splits.val, 1, seed=0).x.shape[1] == 1


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    folder = write_images(tmp_path / "pets", per_class=10)
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    (folder / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 2 of 32 files"):
        splits = load_data(str(folder), model=tiny_rgb(), preprocessing=PRE)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30


def test_classes_file_and_the_models_labels_set_the_order(tmp_path):
    folder = write_images(tmp_path / "pets", per_class=10)
    order = tmp_path / "classes.txt"
    order.write_text("emu\ncat\ndog\n")
    splits = load_data(str(folder), model=tiny_rgb(), preprocessing=PRE, classes=order)
    assert splits.classes == ("emu", "cat", "dog")
    assert all(t == 0 for f, t in zip(splits.val.files, splits.val.targets, strict=True)
               if f.parent.name == "emu")  # fmt: skip
    meta = {"labels": ["dog", "emu", "cat"]}
    splits = load_data(str(folder), model=tiny_rgb(), meta=meta, preprocessing=PRE)
    assert splits.classes == ("dog", "emu", "cat")


# --- a user's Datasets, DataLoaders, the API -------------------------------------------------

DATASET_CODE = """
import torch
from torch.utils.data import Dataset

class Blobs(Dataset):
    classes = ["a", "b"]

    def __init__(self, n=40, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        self.x = torch.randn(n, 3, 8, 8, generator=g) + self.y.view(-1, 1, 1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

blobs = Blobs()

def splits():
    return {"train": Blobs(20, 1), "val": Blobs(10, 2), "test": Blobs(12, 3)}
"""


def test_a_users_dataset_and_dict_of_datasets(tmp_path):
    (tmp_path / "user_data.py").write_text(DATASET_CODE)
    one = load_data(f"{tmp_path / 'user_data.py'}:blobs", model=tiny_rgb(2), seed=3)
    assert (len(one.train), len(one.val), len(one.test)) == (32, 4, 4)
    assert one.classes == ("a", "b") and one.num_classes == 2 and one.image_size == 8
    assert sorted(one.val.indices + one.test.indices + one.train.indices) == list(range(40))
    many = load_data(f"{tmp_path / 'user_data.py'}:splits", model=tiny_rgb(2))
    assert (len(many.train), len(many.val), len(many.test)) == (20, 10, 12)
    ref = reference_set(many.val, per_class=3, seed=0)
    assert ref.y.tolist() == [0, 0, 0, 1, 1, 1] and ref.x.shape == (6, 3, 8, 8)
    assert any(torch.equal(ref.x[0], many.val.x[i]) for i in range(0, 10, 2))  # its items


def test_streamed_measure_equals_in_memory(tmp_path):
    folder = write_images(tmp_path / "pets", per_class=12)
    splits = load_data(str(folder), model=tiny_rgb(), preprocessing=PRE)
    whole = as_tensors(splits.test)
    model = tiny_rgb()
    streamed = measure(model, splits.test, batch_size=2)
    memory = measure(model, whole.x, whole.y)
    assert streamed["accuracy"] == memory["accuracy"]
    assert streamed["loss"] == pytest.approx(memory["loss"], rel=1e-5)
    loader = DataLoader(TensorDataset(whole.x, whole.y), batch_size=3)
    assert evaluate(model, loader)["loss"] == pytest.approx(memory["loss"], rel=1e-5)


def test_loader_workers_decode_the_same_examples(tmp_path):
    folder = write_images(tmp_path / "pets", per_class=8)
    splits = load_data(str(folder), model=tiny_rgb(), preprocessing=PRE)
    model = tiny_rgb()
    alone = evaluate(model, splits.train, batch_size=5)
    assert evaluate(model, splits.train, batch_size=5, workers=2) == alone


def test_a_torchvision_model_without_preprocessing_is_told_its_flags(tmp_path):
    folder = write_images(tmp_path / "pets", per_class=4)
    meta = {"model": "torchvision:resnet18"}
    with pytest.raises(ValueError, match="--image-size 224 --resize 256 --mean 0.485,0.456"):
        load_data(str(folder), meta=meta)


def test_the_api_takes_a_dataloader_a_dataset_and_a_dict(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 3, 8, 8, generator=g), torch.arange(60) % 3
    model = tiny_rgb()
    args = {"target": "channels=0.25", "per_class": 2, "compensate": False}
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    pruned, summary = prune_model(model, loader, get_criterion("weight-l1"), **args)
    assert summary["reference_examples"] == 6 and pruned[0].out_channels == 3
    in_memory = measure(model, x, y)
    assert summary["before"]["accuracy"] == in_memory["accuracy"]
    assert summary["before"]["loss"] == pytest.approx(in_memory["loss"], rel=1e-5)
    for data in (TensorDataset(x, y), {"val": TensorDataset(x[:30], y[:30]), "test": (x, y)}):
        _, summary = prune_model(model, data, get_criterion("weight-l1"), **args)
        assert summary["reference_examples"] == 6
    splits = as_splits({"train": (x, y), "test": (x, y)}, seed=0)
    assert isinstance(splits, DatasetSplits) and isinstance(splits.val, Split)
    assert len(splits.val) == 6 and len(splits.train) == 54  # a tenth of train, stratified
    with pytest.raises(ValueError, match="keys train, val and test"):
        as_splits({"validation": (x, y)})


class Stream(torch.utils.data.IterableDataset):
    """A user's stream: read in order only, no length."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def test_an_iterable_dataloader_is_read_in_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, 8, 8, generator=g), torch.arange(30) % 3
    loader = DataLoader(Stream(x, y), batch_size=7)
    splits = as_splits(loader)
    assert splits.num_classes == 3 and split_size(splits.val) == 30
    ref = reference_set(splits.val, per_class=2, seed=0)
    expected = reference_set(Split(x, y), per_class=2, seed=0)
    assert torch.equal(ref.x, expected.x) and torch.equal(ref.y, expected.y)
    model = tiny_rgb()
    assert measure(model, loader)["loss"] == pytest.approx(measure(model, x, y)["loss"], rel=1e-5)


def test_a_registered_data_source(tmp_path):
    def blobs(arg: str, request) -> dict:
        g = torch.Generator().manual_seed(request.seed)
        n = int(arg)
        return {"val": (torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3)}

    register_data_source("blobs", blobs, help="random blobs")
    try:
        splits = load_data("blobs:12", model=tiny_rgb())
        assert split_size(splits.val) == 12 and splits.test is splits.val
    finally:
        del DATA_SOURCES["blobs"]


# --- the model's own preprocessing --------------------------------------------------------------


def test_preprocessing_from_a_timm_model(tmp_path):
    folder = write_images(tmp_path / "pets", per_class=10)
    model, meta = load_model("timm:test_resnet", num_classes=3)
    assert meta["preprocessing"]["image_size"] == [160, 160]
    splits = load_data(str(folder), model=model, meta=meta)
    assert reference_set(splits.val, 1, seed=0).x.shape == (3, 3, 160, 160)
    assert splits.mean == (0.5, 0.5, 0.5) and splits.preprocessing["resize"] == 168
    given = {"image_size": 32, "mean": (0.2,), "std": (0.3,)}
    explicit = load_data(str(folder), model=model, meta=meta, preprocessing=given)
    assert explicit.image_size == 32 and explicit.mean == (0.2, 0.2, 0.2)
    assert explicit.preprocessing["resize"] is None  # the model's resize was for its size


def test_preprocessing_and_labels_from_an_hf_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "vit"
    save_tiny_hf_vit(hf_dir, image_size=16, patch_size=8, num_labels=3,
                     id2label={0: "emu", 1: "cat", 2: "dog"},
                     label2id={"emu": 0, "cat": 1, "dog": 2})  # fmt: skip
    processor = transformers.ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]
    )
    processor.save_pretrained(hf_dir)
    model, meta = load_model(f"hf:{hf_dir}")
    assert meta["labels"] == ["emu", "cat", "dog"]
    folder = write_images(tmp_path / "pets", per_class=10)
    splits = load_data(str(folder), model=model, meta=meta)
    assert splits.classes == ("emu", "cat", "dog") and splits.image_size == 16
    assert splits.val.targets[0] == splits.classes.index(splits.val.files[0].parent.name)
    from PIL import Image

    theirs = processor(images=Image.open(splits.val.files[0]), return_tensors="pt")
    # the processor's own tensor of the same file, up to rounding (one grey level: 0.02)
    torch.testing.assert_close(splits.val[0][0], theirs["pixel_values"][0], atol=0.05, rtol=0)


# --- the command line: a user's class on a folder, and every bad input -------------------------


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "user_net.py").write_text(USER_MODEL_CODE + USER_RGB_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SHAPPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path


GREY_MODEL = ["--model-arg", "num_classes=3", "--image-size", "28", "--mean", "0.5",
              "--std", "0.25"]  # fmt: skip


def test_prune_a_users_class_on_a_folder(user_dir, monkeypatch, capsys):
    folder = write_images(user_dir / "pets", per_class=20)  # colour images, a grey model
    out = user_dir / "out"
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", f"{user_dir}/user_net.py:Net",
                           "--data", folder, *GREY_MODEL, *TINY, "--batch-size", "4",
                           "--out", out)  # fmt: skip
    assert code == 0, err
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocessing"]["image_size"] == [28, 28] and meta["labels"] == list(CLASSES)
    summary = json.loads((out / "summary.json").read_text())
    model, _ = load_model(f"{user_dir}/user_net.py:Net", num_classes=3)
    splits = load_data(str(folder), model=model, preprocessing={**PRE, "image_size": 28})
    own = evaluate(model, splits.test)  # the user's own evaluation of the same model
    assert summary["before"]["accuracy"] == pytest.approx(own["accuracy"])
    pruned, pruned_meta = load_model(str(out))  # its preprocessing travels with it
    again = load_data(str(folder), model=pruned, meta=pruned_meta)
    assert again.preprocessing == splits.preprocessing
    code, _, err = run_cli(monkeypatch, capsys, "export", out, "--format", "torchscript")
    assert code == 0 and (out / "model.pt").is_file(), err  # checked on the folder's images
    rgb = f"{user_dir}/user_net.py:RGBNet"
    (folder / "dog" / "notes.jpg").write_text("not an image")  # skipped, counted, one line
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", rgb, "--data", folder,
                           "--image-size", "12", "--mean", "0.5", "--std", "0.5", *TINY,
                           "--out", user_dir / "rgb")  # fmt: skip
    assert code == 0, err
    assert f"warning: skipped 1 of 61 files in {folder}" in err and "UserWarning" not in err


def _grey_folder(user_dir: Path) -> Path:
    return write_images(user_dir / "grey", per_class=10, mode="L")


BAD_INPUTS = [
    # (extra arguments, what the one line names)
    (["--data", "nosuch:thing"], "unknown data source 'nosuch:'"),
    (["--data", "no/such/folder"], "unknown dataset 'no/such/folder'"),
    (["--data", "missing.py:ds"], "data file missing.py not found"),
    (["--data", "{dir}/user_net.py:nothing"], "has no 'nothing'"),
    (["--data", "{grey}"], "--image-size N --mean"),
    (["--data", "{grey}", "--image-size", "28"], "give --mean, --std too"),
    (["--data", "{grey}", *GREY_MODEL[2:]], "the model has 10 outputs but"),
    (["--data", "{grey}", *GREY_MODEL, "--per-class", "5"], "pass --per-class 1 or fewer"),
    (["--data", "{grey}", *GREY_MODEL, "--mean", "a,b"], "--mean takes comma-separated"),
    (["--data", "{empty}", *GREY_MODEL], "no images in"),
    (["--data", "{one}", *GREY_MODEL], "has one class (solo)"),
    (["--data", "{broken}", *GREY_MODEL], "none of the 2 image files"),
    (["--data", "{grey}", *GREY_MODEL, "--classes", "{dir}/none.txt"], "--classes file"),
]


@pytest.mark.parametrize(("args", "named"), BAD_INPUTS)
def test_bad_data_is_one_line_exit_2_nothing_written(user_dir, monkeypatch, capsys, args, named):
    places = {"dir": user_dir, "grey": _grey_folder(user_dir), "empty": user_dir / "empty",
              "one": user_dir / "one", "broken": user_dir / "broken"}  # fmt: skip
    (user_dir / "empty" / "cat").mkdir(parents=True)
    write_images(user_dir / "one", per_class=3, classes=("solo",))
    for name in ("a", "b"):
        (user_dir / "broken" / name).mkdir(parents=True)
        (user_dir / "broken" / name / "x.png").write_bytes(b"garbage")
    args = [a.format(**places) for a in args]
    out = user_dir / "out"
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", f"{user_dir}/user_net.py:Net",
                           *TINY, *args, "--out", out)  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
    assert not out.exists()


def test_rank_reads_folders_too(user_dir, monkeypatch, capsys):
    grey = _grey_folder(user_dir)
    code, _, err = run_cli(monkeypatch, capsys, "rank", "--model", f"{user_dir}/user_net.py:Net",
                           "--data", grey, *GREY_MODEL, "--layer", "conv1", "--per-class", "1",
                           "--budget", "30", "--device", "cpu", "--out",
                           user_dir / "r.json")  # fmt: skip
    assert code == 0, err
    record = json.loads((user_dir / "r.json").read_text())
    assert record["spec"]["preprocessing"]["image_size"] == 28 and record["reference_examples"] == 3


def test_fine_tuning_and_tune_lrp_read_folders_batch_by_batch(user_dir, monkeypatch, capsys):
    """Neither holds a split whole: the fine-tune reads the folder's training images in
    seeded batches, tune-lrp's test curve reads the test split in chunks."""
    import shapprune.data

    def whole(split):
        raise AssertionError("a split was loaded whole")

    monkeypatch.setattr(shapprune.data, "as_tensors", whole)
    grey = _grey_folder(user_dir)
    model = f"{user_dir}/user_net.py:Net"
    out = user_dir / "tuned"
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", model, "--data", grey,
                           *GREY_MODEL, *TINY, "--per-class", "1", "--finetune-epochs",
                           "1", "--batch-size", "4", "--out", out)  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finetune_epochs"] == 1 and 0 <= summary["after"]["accuracy"] <= 1
    code, _, err = run_cli(monkeypatch, capsys, "tune-lrp", "--model", model, "--data", grey,
                           *GREY_MODEL, "--trials", "1", "--per-class", "1", "--device", "cpu",
                           "--out", user_dir / "rules.json")  # fmt: skip
    assert code == 0, err
    tested = json.loads((user_dir / "rules.json").read_text())["info"]["test_auc"]
    assert 0 <= tested["tuned"] <= 1 and 0 <= tested["epsilon"] <= 1
