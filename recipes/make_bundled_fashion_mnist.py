r"""Draws the Fashion-MNIST subset bundled with keras_edu from the full files.

`keras_edu.data.load_fashion_mnist()` falls back to this subset when the
full data set is neither on disk nor downloadable, so that the main job
(`recipes/fashion_mnist.py`) and the README's quick start run on a fresh
machine without network. The subset is class-balanced and seeded: for each
split and each class `c = 0 .. 9` in order, one generator
`numpy.random.default_rng(seed)` per split picks `--train_per_class` (or
`--test_per_class`) of the class's images without replacement; the picked
images keep their order in the full files. The four IDX files are written
gzipped (level 9, no file name, time stamp 0), as Keras and Debian ship
them.

Usage:

    # Rebuild the bundled files from Debian's package (the defaults):
    python recipes/make_bundled_fashion_mnist.py --overwrite
    # Check that the bundled files are exactly that draw:
    python recipes/make_bundled_fashion_mnist.py --check
    # Another copy of the full files, another draw:
    python recipes/make_bundled_fashion_mnist.py --source_dir=DIR \
        --out_dir=/tmp/subset --seed=1 --train_per_class=1000
"""

import gzip
import os

from absl import flags
import numpy as np

import cli
from keras_edu.data import fashion_mnist

# The draw the package ships (keras_edu/data/fashion_mnist_subset/README.md
# documents it; tests/test_bundled_data.py checks the files against it).
SEED = 0
TRAIN_PER_CLASS = 2000
TEST_PER_CLASS = 500
NUM_CLASSES = 10

_IMAGES, _LABELS = "images", "labels"
# Output file, array and IDX magic number, per split.
_OUTPUTS = {
    "train": (
        ("train-images-idx3-ubyte.gz", _IMAGES),
        ("train-labels-idx1-ubyte.gz", _LABELS),
    ),
    "t10k": (
        ("t10k-images-idx3-ubyte.gz", _IMAGES),
        ("t10k-labels-idx1-ubyte.gz", _LABELS),
    ),
}


def define_flags(flag_values):
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "source_dir",
        "/usr/share/datasets/fashion-mnist",
        "Folder of the four full Fashion-MNIST IDX files (Debian's "
        "`dataset-fashion-mnist` package by default).",
        **fv,
    )
    flags.DEFINE_string(
        "out_dir",
        fashion_mnist.BUNDLED_DIR,
        "Where to write the four gzipped IDX files (default: the package's "
        "bundled folder).",
        **fv,
    )
    flags.DEFINE_integer("seed", SEED, "Seed of the draw.", **fv)
    flags.DEFINE_integer(
        "train_per_class", TRAIN_PER_CLASS, "Training images per class.", **fv
    )
    flags.DEFINE_integer(
        "test_per_class", TEST_PER_CLASS, "Test images per class.", **fv
    )
    flags.DEFINE_bool(
        "check",
        False,
        "Write nothing; check that the files in --out_dir hold exactly the "
        "draw of these flags (exit status 1 when they do not).",
        **fv,
    )
    flags.DEFINE_bool(
        "overwrite", False, "Replace files already in --out_dir.", **fv
    )


def draw_indices(labels, per_class, seed, num_classes=NUM_CLASSES):
    """Sorted indices of `per_class` examples of each class, drawn seeded.

    Args:
        labels: Integer labels of the full split, shape `(N,)`.
        per_class: Examples to keep per class.
        seed: Seed of `numpy.random.default_rng`, one generator per call.
        num_classes: Classes `0 .. num_classes - 1`, drawn in this order.

    Example:

    ```python
    labels = np.arange(100) % 10
    keep = draw_indices(labels, per_class=3, seed=0)
    np.bincount(labels[keep])  # array([3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    ```
    """
    rng = np.random.default_rng(seed)
    picked = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise cli.RecipeError(
                f"Class {label} has {len(members)} examples, fewer than the "
                f"{per_class} asked for: lower --train_per_class / "
                "--test_per_class."
            )
        picked.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def draw(full, seed, train_per_class, test_per_class):
    """The subset of `full` (`load_fashion_mnist`'s arrays), split by split."""
    (x_train, y_train), (x_test, y_test) = full
    train = draw_indices(y_train, train_per_class, seed)
    test = draw_indices(y_test, test_per_class, seed)
    return {
        "train": {_IMAGES: x_train[train], _LABELS: y_train[train]},
        "t10k": {_IMAGES: x_test[test], _LABELS: y_test[test]},
    }


def idx_bytes(array):
    """An uint8 array as IDX bytes: magic, big-endian dimensions, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.tobytes()


def write_gzip(filename, content):
    # No file name and time stamp 0 in the gzip header: the same draw gives
    # the same bytes (with the same zlib), so a rebuild shows no git diff.
    with open(filename, "wb") as raw:
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
        ) as f:
            f.write(content)


def differences(subset, directory):
    """The files of `directory` that do not hold `subset`, as messages."""
    try:
        (x_train, y_train), (x_test, y_test) = fashion_mnist.load_fashion_mnist(
            path=directory
        )
    except (FileNotFoundError, ValueError) as error:
        return [str(error)]
    found = {
        "train": {_IMAGES: x_train, _LABELS: y_train},
        "t10k": {_IMAGES: x_test, _LABELS: y_test},
    }
    problems = []
    for split, outputs in _OUTPUTS.items():
        for name, kind in outputs:
            if not np.array_equal(found[split][kind], subset[split][kind]):
                problems.append(
                    f"{os.path.join(directory, name)} differs from the draw "
                    f"(shape {found[split][kind].shape}, expected "
                    f"{subset[split][kind].shape})."
                )
    return problems


def body(flag_values):
    full = fashion_mnist.load_fashion_mnist(
        path=flag_values.source_dir, source="full"
    )
    if len(full[0][1]) != 60000 or len(full[1][1]) != 10000:
        raise cli.RecipeError(
            f"--source_dir={flag_values.source_dir} holds "
            f"{len(full[0][1])} + {len(full[1][1])} images, not the full "
            "60,000 + 10,000 of Fashion-MNIST."
        )
    subset = draw(
        full,
        flag_values.seed,
        flag_values.train_per_class,
        flag_values.test_per_class,
    )
    out_dir = flag_values.out_dir
    if flag_values.check:
        problems = differences(subset, out_dir)
        if problems:
            raise cli.RecipeError("\n".join(problems))
        print(f"{out_dir} holds exactly the draw (seed {flag_values.seed}).")
        return subset
    os.makedirs(out_dir, exist_ok=True)
    for split, outputs in _OUTPUTS.items():
        for name, _ in outputs:
            cli.check_output_path(
                os.path.join(out_dir, name), flag_values.overwrite, "out_dir"
            )
    for split, outputs in _OUTPUTS.items():
        for name, kind in outputs:
            filename = os.path.join(out_dir, name)
            write_gzip(filename, idx_bytes(subset[split][kind]))
            print(f"{filename}: {os.path.getsize(filename):,} bytes")
    for split in _OUTPUTS:
        counts = np.bincount(subset[split][_LABELS], minlength=NUM_CLASSES)
        print(f"{split}: {counts.sum():,} images, per class {counts.tolist()}")
    return subset


main, run = cli.entry_points(define_flags, body)

if __name__ == "__main__":
    cli.launch(define_flags, main)
