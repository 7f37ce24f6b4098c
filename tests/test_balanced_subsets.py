"""`--train_size`/`--test_size` are seeded, class-balanced draws (issue 21).

`keras_edu.data.balanced_subset` on small label arrays (its exact rule),
then the recipes' `load_data` on tiny PNG folders written to `tmp_path`
(sorted by class on disk, as a `test/` folder is listed), fake
Fashion-MNIST arrays and TFDS mock data; and a folder's image size
inferred from its files. One `distill.py` run (1 epoch, 8x8 images)
checks the results JSON.
"""

import json

from absl import flags
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")

from keras_edu.data import balanced_subset  # noqa: E402

import helpers  # noqa: E402

RECIPES = helpers.recipes_on_path()

import cli  # noqa: E402
import configs  # noqa: E402
import data_loading  # noqa: E402
import distill  # noqa: E402


# ---------------------------------------------------------------- data


def png_folder(root, per_class, size=(8, 8)):
    """One sub-folder per class, `per_class[c]` PNGs each, listed sorted.

    Image `i` of class `c` is the flat value `40 * c + i`, so that every
    image (and its class) can be told from its pixels.
    """
    for label, count in enumerate(per_class):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.full((*size, 3), 40 * label + i, np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


def split_folder(root, train, test, size=(8, 8)):
    png_folder(root / "train", train, size)
    png_folder(root / "test", test, size)
    return root


def sorted_fashion_mnist(folder, train=60, test=30):
    """Fake Fashion-MNIST IDX files whose labels are sorted by class."""
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.sort(np.arange(count) % 10)
        images = np.repeat(labels, 28 * 28).reshape(count, 28, 28)
        helpers.save_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images * 20)
        helpers.save_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def dataset_labels(source):
    """The labels a source's dataset yields (not its `labels` field)."""
    return np.array([int(y) for _, y in source.dataset.as_numpy_iterator()])


def per_class(labels, num_classes):
    return np.bincount(labels, minlength=num_classes).tolist()


# --------------------------------------------------- balanced_subset rule


@pytest.mark.parametrize(
    "class_sizes, size, expected",
    [
        ([10, 10, 10], 7, [3, 2, 2]),  # The first 7 % 3 classes: +1.
        ([10, 10, 10], 30, [10, 10, 10]),
        ([4, 4, 4, 4], 6, [2, 2, 1, 1]),
        ([1, 10, 10], 9, [1, 4, 4]),  # Class 0 gives what it has ...
        ([1, 10, 10], 10, [1, 5, 4]),  # ... the rest: first classes first.
        ([0, 3, 10], 10, [0, 3, 7]),  # An empty class gives none.
        ([2, 9, 5], 11, [2, 5, 4]),
        ([3, 3, 3], 2, [1, 1, 0]),
    ],
)
def test_balanced_subset_counts_follow_the_rule(class_sizes, size, expected):
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    keep = balanced_subset(labels, size, seed=0, num_classes=len(class_sizes))
    assert per_class(labels[keep], len(class_sizes)) == expected
    assert len(np.unique(keep)) == size
    assert np.all(np.diff(keep) > 0)  # Sorted: the data's order is kept.


def test_balanced_subset_is_seeded_and_reproducible():
    labels = np.random.default_rng(1).integers(0, 5, 500)
    first = balanced_subset(labels, 50, seed=3)
    np.random.seed(99)  # The global NumPy state plays no part.
    np.testing.assert_array_equal(balanced_subset(labels, 50, seed=3), first)
    other = balanced_subset(labels, 50, seed=4)
    assert not np.array_equal(other, first)
    assert per_class(labels[other], 5) == per_class(labels[first], 5)


def test_balanced_subset_rejects_bad_input():
    labels = np.array([0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"`size` must be an int in \[0, 4\]"):
        balanced_subset(labels, 5)
    with pytest.raises(ValueError, match="`size` must be an int"):
        balanced_subset(labels, -1)
    with pytest.raises(ValueError, match="1-D array of integer class ids"):
        balanced_subset(np.eye(3), 2)
    with pytest.raises(ValueError, match="num_classes=2"):
        balanced_subset(labels, 2, num_classes=2)


# ------------------------------------------------- the recipes' subsets


def test_folder_subsets_are_balanced_on_both_splits(tmp_path):
    root = split_folder(tmp_path / "images", [10, 10, 3], [6, 6, 6])
    data = data_loading.load_data(
        str(root), train_size=13, test_size=8, seed=0
    )
    # Train: class 2 has 3, the other two share the rest. Test: the first
    # 8 % 3 = 2 classes get one more, though the folder is sorted by class.
    assert data.examples_per_class == {"train": [5, 5, 3], "test": [3, 3, 2]}
    assert per_class(data.test_y, 3) == [3, 3, 2]
    assert per_class(dataset_labels(data.train), 3) == [5, 5, 3]
    assert data.train.size == 13


def test_folder_subsets_are_the_same_on_every_call(tmp_path):
    root = split_folder(tmp_path / "images", [8, 8, 8], [8, 8, 8])

    def load(seed):
        data = data_loading.load_data(
            str(root), train_size=9, test_size=6, seed=seed
        )
        train = [x for x, _ in data.train.dataset.as_numpy_iterator()]
        return np.stack(train), data.test_x

    train, test = load(seed=0)
    again_train, again_test = load(seed=0)
    np.testing.assert_array_equal(again_train, train)
    np.testing.assert_array_equal(again_test, test)
    other_train, _ = load(seed=1)
    assert not np.array_equal(np.sort(other_train, 0), np.sort(train, 0))


def test_held_out_folder_subsets_are_balanced(tmp_path):
    # No train/ + test/: 25% of each class is held out, then subsets.
    root = png_folder(tmp_path / "images", [8, 8, 8, 8])
    data = data_loading.load_data(
        str(root), test_fraction=0.25, train_size=10, test_size=4, seed=0
    )
    assert data.examples_per_class == {
        "train": [3, 3, 2, 2],
        "test": [1, 1, 1, 1],
    }


def test_array_subsets_are_balanced(tmp_path):
    folder = sorted_fashion_mnist(tmp_path)  # Labels sorted: 0, 0, ... 9.
    data = data_loading.load_data(
        "fashion_mnist", data_dir=str(folder), train_size=25, test_size=20
    )
    expected_train = [3] * 5 + [2] * 5
    assert data.examples_per_class == {
        "train": expected_train,
        "test": [2] * 10,
    }
    assert per_class(data.train_arrays[1], 10) == expected_train
    # Each image's pixels (20 * label) still match its label.
    np.testing.assert_array_equal(
        data.train.labels * 20, [x[0, 0, 0] for x, _ in data.train.dataset]
    )


def test_tfds_subsets_are_balanced():
    with tfds.testing.mock_data(num_examples=40):  # Random labels.
        data = data_loading.load_data("cifar10", train_size=20, test_size=10)
        train_labels = dataset_labels(data.train)
    assert data.examples_per_class["test"] == [1] * 10
    assert per_class(data.test_y, 10) == [1] * 10
    # The labels read without decoding are the ones the images come with.
    np.testing.assert_array_equal(train_labels, data.train.labels)
    assert data.examples_per_class["train"] == per_class(train_labels, 10)
    assert sum(data.examples_per_class["train"]) == 20


def test_distill_results_record_the_examples_per_class(tmp_path):
    # The run: a test folder sorted by class, --test_size.
    root = split_folder(tmp_path / "images", [4, 4, 4], [5, 5, 5])
    result = distill.run(
        [
            f"--dataset={root}",
            "--method=scratch",
            "--student=cnn4",
            "--epochs=1",
            "--train_size=6",
            "--test_size=7",
            "--partition=1:1:1",
            "--batch_size=8",
            "--verbose=0",
            f"--results={tmp_path / 'scratch.json'}",
        ]
    )
    with open(tmp_path / "scratch.json") as f:
        saved = json.load(f)
    assert saved["examples_per_class"] == {
        "train": [2, 2, 2],
        "test": [3, 2, 2],
    }
    assert saved["test_examples"] == 7 and saved["train_examples"] == 6
    # Every group is in the test subset, so each has a score.
    assert None not in result["per_group_top1"]


# ---------------------------------------------------------- bad sizes


def _flags(*argv):
    flag_values = flags.FlagValues()
    distill.define_flags(flag_values)
    flag_values(["distill.py", "--method=scratch", *argv])
    cli.resolve_flags(flag_values, configs, {})
    return flag_values


def test_sizes_smaller_than_the_classes_are_refused(tmp_path):
    root = split_folder(tmp_path / "images", [4, 4, 4], [4, 4, 4])
    with pytest.raises(
        cli.RecipeError,
        match=r"--train_size=2 is smaller than the 3 classes.*"
        r"--train_size=3 or more, or 0 for all",
    ):
        data_loading.load_data(str(root), train_size=2)
    with pytest.raises(cli.RecipeError, match="--test_size must be >= 0"):
        data_loading.load_data(str(root), test_size=-1)


def test_typed_sizes_larger_than_the_split_are_refused(tmp_path):
    root = split_folder(tmp_path / "images", [4, 4, 4], [4, 4, 4])
    with pytest.raises(
        cli.RecipeError,
        match=r"--test_size=100 is more than the 12 images of the test "
        r"split\. Pass --test_size=12 or less, or 0 for all",
    ):
        data_loading.data_from_flags(
            _flags(f"--dataset={root}", "--test_size=100")
        )
    # --quick's presets (2,000 and 1,000) are caps: the whole splits.
    data = data_loading.data_from_flags(_flags(f"--dataset={root}", "--quick"))
    assert data.examples_per_class == {"train": [4, 4, 4], "test": [4, 4, 4]}


# ---------------------------------------------------- inferred image size


def test_image_size_follows_the_files(tmp_path, capsys):
    root = split_folder(tmp_path / "images", [3, 3], [2, 2], size=(32, 24))
    data = data_loading.load_data(str(root))
    assert data.image_shape == (32, 24, 3)
    assert data.augment == "cifar"  # Not resized: fixed-size augmentation.
    assert data.test_x.shape == (4, 32, 24, 3)
    out = capsys.readouterr().out
    assert "32x24x3 images (the files' size)" in out
    assert "normalised with the imagenet mean/std, augmentation cifar" in out
    assert "train 6 (3 per class), test 4 (2 per class) images" in out


def test_image_size_flag_beats_the_files(tmp_path, capsys):
    root = split_folder(tmp_path / "images", [2, 2], [2, 2], size=(32, 32))
    data = data_loading.load_data(str(root), image_size=(16, 16))
    assert data.image_shape == (16, 16, 3)
    assert "16x16x3 images (--image_size)" in capsys.readouterr().out


def test_images_of_varying_sizes_get_the_default(tmp_path, capsys):
    root = png_folder(tmp_path / "images", [3, 3], size=(20, 24))
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(
        root / "class_1" / "large.png"
    )
    data = data_loading.load_data(str(root))
    assert data.image_shape == (64, 64, 3)
    assert (
        "resized to the default 64x64: the files range from 20x24 to 40x30"
        in capsys.readouterr().out
    )
