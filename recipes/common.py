"""Shared pieces of the recipes: flags, data, models, training, reports.

The recipes (`train_teacher.py`, `distill.py`, `export.py`,
`fashion_mnist.py`) are scripts, but each also exposes its work as plain
functions so that the others (and the tests) can call them in-process. To
let one process import several recipes, no recipe defines absl flags at
import time: each has a `define_flags(flag_values)` function, called on
`flags.FLAGS` when the script runs and on a fresh `flags.FlagValues` by
`run(argv)` in tests.
"""

import dataclasses
import difflib
import json
import math
import os
import re
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np

import keras_edu
from keras_edu import data as edu_data
from keras_edu.data._tf import tf


class RecipeError(ValueError):
    """Bad input to a recipe. The message names the flag and the fix."""


# ------------------------------------------------------------------ flags


AUGMENTATIONS = ("default", "none", "cifar", "resize_crop")


def define_data_flags(flag_values):
    """The flags that choose and shape the data set."""
    flags.DEFINE_string(
        "dataset",
        "fashion_mnist",
        "Data set: `fashion_mnist` (local IDX files, offline), a TensorFlow "
        "Datasets name (`cifar100`, `food101`, ...; `tfds:NAME` forces TFDS), "
        "or a folder with one sub-folder of images per class (a `train/` + "
        "`test/` pair of such folders is used as the splits).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Fashion-MNIST: the folder with its four IDX files. TFDS: the TFDS "
        "data directory. Default: the usual places.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "image_size",
        None,
        "`H` or `H,W`: the size images are resized to (image folders: "
        "default 64; TFDS sets whose images vary in size need it). Default: "
        "the data's own size.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "test_fraction",
        0.2,
        "Image folders without `train/` and `test/` sub-folders: the share "
        "of each class held out as the test split (seeded by --seed).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "augment",
        "default",
        AUGMENTATIONS,
        "Training augmentation: `default` (none for Fashion-MNIST, `cifar` "
        "for fixed-size images, `resize_crop` when images are resized), "
        "`none`, `cifar` (pad 4, random crop, flip) or `resize_crop`.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "train_size",
        0,
        "Use only this many training images (a seeded random subset); 0: all.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "test_size",
        0,
        "Use only this many test images (the first ones); 0: all.",
        flag_values=flag_values,
    )


def define_training_flags(flag_values, config_names):
    """The flags of the optimisation, shared by the training recipes."""
    flags.DEFINE_enum(
        "config",
        None,
        config_names,
        "A named recipe from recipes/configs.py; it sets the defaults of the "
        "flags it lists (flags given on the command line still win).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epochs", 6, "Training epochs.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "batch_size", 64, "Batch size.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "lr", 0.05, "Initial learning rate of SGD.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "momentum", 0.9, "SGD momentum.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "weight_decay",
        5e-4,
        "Weight decay of convolution and dense kernels (PyTorch SGD's "
        "coupled `weight_decay`).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "lr_decay_epochs",
        [],
        "Epochs at which the learning rate is multiplied by "
        "--lr_decay_factor, e.g. `150,180,210`.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "lr_decay_factor",
        0.1,
        "Learning-rate factor applied at each of --lr_decay_epochs.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed",
        0,
        "Seed of weights, shuffles, subsets and augmentation.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "quick",
        False,
        "A small, fast run: 2,000 training and 1,000 test images, 3 epochs "
        "(grades at epochs 1 and 2), no learning-rate decay. Flags given "
        "on the command line still win.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace output files that already exist.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "verbose",
        1,
        "Keras verbosity: 1 progress bar, 2 one line per epoch, 0 silent.",
        flag_values=flag_values,
    )


# What `--quick` sets, unless the flag was given on the command line.
QUICK = {
    "train_size": 2000,
    "test_size": 1000,
    "epochs": 3,
    "boundaries": ["1", "2"],
    "lr_decay_epochs": [],
}


def apply_overrides(flag_values, values, source):
    """Sets the flags in `values` that were not given on the command line."""
    for name, value in values.items():
        if name not in flag_values:
            continue
        if not flag_values[name].present:
            try:
                flag_values[name].value = value
            except flags.IllegalFlagValueError as error:
                raise RecipeError(f"{source} sets --{name}={value!r}: {error}")


def resolve_flags(flag_values, configs, config_keys):
    """Applies `--config`, then `--quick`, to the flags not given explicitly.

    Args:
        flag_values: The parsed `FlagValues`.
        configs: The `recipes.configs` module.
        config_keys: Maps a flag name to the config key it reads (e.g.
            `{"arch": "teacher", "epochs": "teacher_epochs"}`); other flags
            read the key of the same name.
    """
    if flag_values.config:
        config = configs.get(flag_values.config)
        values = {}
        for name in flag_values:
            key = config_keys.get(name, name)
            if key in config and name != "config":
                values[name] = config[key]
        if config.get("dataset") == "" and not flag_values["dataset"].present:
            raise RecipeError(
                f"--config={flag_values.config} has no data set of its own: "
                "pass --dataset=FOLDER, e.g. the extracted "
                "`256_ObjectCategories` folder of Caltech-256."
            )
        apply_overrides(flag_values, values, f"--config={flag_values.config}")
    if flag_values.quick:
        apply_overrides(flag_values, QUICK, "--quick")


def entry_points(define_flags, body):
    """`main(argv)` for `app.run` and `run(argv)` for tests.

    `main` turns a `RecipeError` into a one-line message and exit status 1;
    `run` parses `argv` (a list of `--flag=value` strings) into a fresh
    `FlagValues` and lets errors propagate.
    """

    def main(argv):
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow logs through absl; keep its INFO lines out of the
            # recipe's output unless --verbosity asks for them.
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            raise app.UsageError(
                f"Unexpected arguments {argv[1:]}: every input is a "
                "`--flag=value`."
            )
        try:
            body(flags.FLAGS)
        except RecipeError as error:
            sys.exit(f"Error: {error}")

    def run(argv=()):
        flag_values = flags.FlagValues()
        define_flags(flag_values)
        flag_values([sys.argv[0]] + list(argv))
        return body(flag_values)

    return main, run


def int_list(values, flag, minimum=None):
    """`["150", "180"]` -> `[150, 180]`, naming `--flag` on bad input."""
    try:
        numbers = [int(v) for v in values if str(v).strip() != ""]
    except ValueError:
        raise RecipeError(
            f"--{flag} must be a comma-separated list of integers, e.g. "
            f"`--{flag}=150,180`. Received: {','.join(map(str, values))}."
        ) from None
    if minimum is not None and any(n < minimum for n in numbers):
        raise RecipeError(
            f"--{flag} values must be >= {minimum}. Received: {numbers}."
        )
    return numbers


def check_output_path(path, overwrite, flag):
    """Refuses an existing output unless `--overwrite`; makes its folder."""
    if not path:
        raise RecipeError(f"--{flag} must name an output path.")
    if os.path.exists(path) and not overwrite:
        raise RecipeError(
            f"The output {path} (from --{flag}) already exists. Pass "
            f"--overwrite to replace it, or choose another --{flag}."
        )
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return path


def remove_path(path):
    """Deletes a file or folder (used before replacing an output)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def write_json(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def run_facts(seed):
    """The fields every result JSON starts with."""
    return {
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "keras_edu_version": keras_edu.__version__,
        "seed": seed,
    }


# ------------------------------------------------------------ settings


@dataclasses.dataclass
class TrainSettings:
    """How to optimise: SGD with momentum, an epoch-wise step schedule."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: tuple = ()
    lr_decay_factor: float = 0.1
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
            ):
                raise RecipeError(
                    f"--{name} must be a positive integer. Received: {value!r}."
                )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecipeError(f"--lr must be > 0. Received: {self.lr}.")
        if not 0 <= self.momentum < 1:
            raise RecipeError(
                f"--momentum must be in [0, 1). Received: {self.momentum}."
            )
        if self.weight_decay < 0:
            raise RecipeError(
                f"--weight_decay must be >= 0. Received: {self.weight_decay}."
            )
        self.lr_decay_epochs = tuple(self.lr_decay_epochs)

    def as_dict(self):
        return dataclasses.asdict(self)


def settings_from_flags(flag_values):
    return TrainSettings(
        epochs=flag_values.epochs,
        batch_size=flag_values.batch_size,
        lr=flag_values.lr,
        momentum=flag_values.momentum,
        weight_decay=flag_values.weight_decay,
        lr_decay_epochs=int_list(
            flag_values.lr_decay_epochs, "lr_decay_epochs", minimum=1
        ),
        lr_decay_factor=flag_values.lr_decay_factor,
        seed=flag_values.seed,
        verbose=flag_values.verbose,
    )


def make_optimizer(settings):
    return keras.optimizers.SGD(
        learning_rate=settings.lr, momentum=settings.momentum
    )


def learning_rate_at(settings, epoch):
    """The learning rate of `epoch` (0-based) under the step schedule."""
    decays = sum(epoch >= e for e in settings.lr_decay_epochs)
    return settings.lr * settings.lr_decay_factor**decays


def schedule_callbacks(settings):
    """The learning-rate schedule as a callback, or none.

    Epoch-based rather than a step-based `LearningRateSchedule`: the number
    of steps per epoch changes at each grade of education distillation, and
    the decay must still happen at the same epochs.
    """
    if not settings.lr_decay_epochs:
        return []
    return [
        keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: learning_rate_at(settings, epoch)
        )
    ]


# ----------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
    """Train and test splits ready for training, and how to preprocess them.

    Attributes:
        name: The `--dataset` value.
        train: `ImageSource` of the training split (uint8 images).
        test_x, test_y: The test split, preprocessed (float32) and labels.
        num_classes, class_names: The classes.
        image_shape: `(H, W, C)` the models take.
        normalize: The `make_pipeline(normalize=...)` value.
        augment: The training augmentation (`None`, `"cifar"`,
            `"resize_crop"`).
        train_arrays: `(x float32, y)`, the preprocessed training split,
            when it is in memory and not augmented (then `fit` gets NumPy
            arrays, the fastest input on every backend); else `None`.
    """

    name: str
    train: object
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple
    image_shape: tuple
    normalize: object
    augment: object
    train_arrays: object = None

    def preprocessing(self):
        """How to turn raw pixels into the models' inputs (for the JSON)."""
        normalize = self.normalize
        if isinstance(normalize, str):
            normalize = edu_data.NORMALIZATION_PRESETS[normalize]
        if normalize is True:
            mean_std = None
        else:
            mean_std = {"mean": list(normalize[0]), "std": list(normalize[1])}
        return {
            "image_shape": list(self.image_shape),
            "scale": 1 / 255,
            "normalize": mean_std,
            "formula": "(pixels / 255 - mean) / std"
            if mean_std
            else "pixels / 255",
        }


def parse_image_size(value):
    """`"64"` or `"64,48"` -> `(64, 64)` / `(64, 48)`; `None` stays `None`."""
    if value in (None, ""):
        return None
    parts = re.split(r"[,x]", str(value).strip())
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise RecipeError(
            f"--image_size must be `H` or `H,W` with positive integers, e.g. "
            f"`--image_size=64`. Received: {value!r}."
        )
    return sizes


def load_data(
    dataset,
    data_dir=None,
    image_size=None,
    test_fraction=0.2,
    augment="default",
    train_size=0,
    test_size=0,
    seed=0,
):
    """Loads `--dataset` into a `Data`: train source and test arrays.

    Args:
        dataset: `"fashion_mnist"`, a TFDS name (`"tfds:NAME"` forces
            TFDS), or a folder of class sub-folders.
        data_dir: Fashion-MNIST IDX folder or TFDS data directory.
        image_size: `None`, or `(H, W)` to resize to.
        test_fraction: Held-out share per class for image folders without
            a `test/` split.
        augment: One of `AUGMENTATIONS`.
        train_size, test_size: Subset sizes (0: all).
        seed: Seed of the subsets and held-out split.
    """
    if not dataset:
        raise RecipeError(
            "--dataset is empty. Pass `fashion_mnist`, a TFDS name such as "
            "`cifar100`, or a folder of class sub-folders."
        )
    arrays = None
    if dataset == "fashion_mnist":
        (train, test), arrays = _fashion_mnist(data_dir)
        normalize, fixed = "fashion_mnist", True
    elif _looks_like_path(dataset):
        train, test = _image_folder(
            dataset, image_size or (64, 64), test_fraction, seed
        )
        normalize = "imagenet" if train.image_shape[-1] == 3 else True
        fixed = True
    else:
        train, test = _tfds(dataset, data_dir)
        base = dataset.removeprefix("tfds:").split(":")[0].split("/")[0]
        normalize = {"cifar10": "cifar10", "cifar100": "cifar100"}.get(
            base, True
        )
        if train.image_shape[-1] == 3 and normalize is True:
            normalize = "imagenet"
        fixed = None not in train.image_shape
    image_shape = train.image_shape
    if image_size is not None and tuple(image_shape[:2]) != tuple(image_size):
        image_shape = (*image_size, train.image_shape[-1])
        fixed = False
    elif not fixed:
        raise RecipeError(
            f"--dataset={dataset} has images of varying sizes; pass "
            "--image_size=H,W (e.g. `--image_size=64`) to resize them."
        )
    augment = _resolve_augment(augment, dataset, fixed)
    train, arrays = _subset(train, arrays, train_size, seed, random=True)
    test, _ = _subset(test, None, test_size, seed, random=False)
    test_x, test_y = materialize(test, normalize, augment, image_shape)
    if arrays is not None and augment is None:
        source = edu_data.from_arrays(arrays[0], arrays[1])
        arrays = (
            materialize(source, normalize, None, image_shape)[0],
            arrays[1],
        )
    else:
        arrays = None
    return Data(
        name=dataset,
        train=train,
        test_x=test_x,
        test_y=test_y,
        num_classes=train.num_classes,
        class_names=tuple(train.class_names),
        image_shape=tuple(image_shape),
        normalize=normalize,
        augment=augment,
        train_arrays=arrays,
    )


def data_from_flags(flag_values):
    """`load_data` with the data flags of `define_data_flags`."""
    return load_data(
        flag_values.dataset,
        data_dir=flag_values.data_dir,
        image_size=parse_image_size(flag_values.image_size),
        test_fraction=flag_values.test_fraction,
        augment=flag_values.augment,
        train_size=flag_values.train_size,
        test_size=flag_values.test_size,
        seed=flag_values.seed,
    )


def _fashion_mnist(data_dir):
    try:
        (x, y), (x_test, y_test) = edu_data.load_fashion_mnist(data_dir)
    except FileNotFoundError as error:
        raise RecipeError(
            f"--dataset=fashion_mnist: the data was not found.\n{error}\n"
            "(With the recipes, pass the folder as --data_dir.)"
        ) from None
    names = edu_data.FASHION_MNIST_CLASS_NAMES
    train = edu_data.from_arrays(x, y, class_names=names)
    test = edu_data.from_arrays(x_test, y_test, class_names=names)
    return (train, test), (train_images(x), y.astype("int32"))


def train_images(x):
    """uint8 `(N, H, W)` -> `(N, H, W, 1)`; other shapes unchanged."""
    return x[..., np.newaxis] if x.ndim == 3 else x


def _looks_like_path(name):
    # TFDS names may hold a `/` (`imagenette/320px-v2`): only an existing
    # folder or an explicit path is a folder.
    return os.path.isdir(os.path.expanduser(name)) or name.startswith(
        (os.sep, ".", "~")
    )


def _image_folder(path, image_size, test_fraction, seed):
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise RecipeError(
            f"--dataset={path} is not a folder. Pass an existing folder with "
            "one sub-folder of images per class, `fashion_mnist`, or a TFDS "
            "name."
        )
    splits = [os.path.join(path, s) for s in ("train", "test")]
    try:
        if all(os.path.isdir(s) for s in splits):
            train = edu_data.from_directory(splits[0], image_size, seed=seed)
            test = edu_data.from_directory(
                splits[1],
                image_size,
                class_names=train.class_names,
                shuffle=False,
            )
            return train, test
        source = edu_data.from_directory(path, image_size, seed=seed)
    except ValueError as error:
        raise RecipeError(f"--dataset={path}: {error}") from None
    if not 0 < test_fraction < 1:
        raise RecipeError(
            f"--test_fraction must be in (0, 1). Received: {test_fraction}."
        )
    return holdout_split(source, test_fraction, seed)


def holdout_split(source, test_fraction, seed):
    """Splits a source with known labels into train and test, per class.

    Every class keeps at least one training image, and holds out
    `round(test_fraction * count)` images (at least one when it has two or
    more). The split is seeded, so it is the same on every run.
    """
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(source.labels), bool)
    for label in range(source.num_classes):
        members = np.flatnonzero(source.labels == label)
        count = len(members)
        held = min(max(round(test_fraction * count), int(count > 1)), count - 1)
        if held > 0:
            is_test[rng.choice(members, held, replace=False)] = True
    mask = tf.constant(is_test)

    def part(keep_test):
        dataset = (
            source.dataset.enumerate()
            .filter(lambda i, example: tf.equal(mask[i], keep_test))
            .map(lambda i, example: example)
        )
        labels = source.labels[is_test == keep_test]
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(len(labels))
        )
        return dataclasses.replace(
            source, dataset=dataset, size=len(labels), labels=labels
        )

    return part(False), part(True)


def _tfds(name, data_dir):
    """Train and test sources of a TFDS data set (`validation` if no `test`)."""
    tfds_name = name.removeprefix("tfds:")
    splits = []
    for split in ("train", "test", "validation"):
        if split == "validation" and len(splits) == 2:
            break
        try:
            splits.append(
                edu_data.from_tfds(tfds_name, split, data_dir=data_dir)
            )
        except ValueError as error:
            if "Unknown TFDS dataset" in str(error):
                raise RecipeError(
                    f"--dataset={name} is not `fashion_mnist`, an existing "
                    f"folder or a TensorFlow Datasets name. {error}"
                ) from None
            if "split" not in str(error).lower() or split == "train":
                raise RecipeError(f"--dataset={name}: {error}") from None
        except Exception as error:  # Download or preparation failures.
            raise RecipeError(
                f"--dataset={name}: TensorFlow Datasets could not load its "
                f"{split} split ({type(error).__name__}: {error}). It downloads "
                "the data once (network access needed), or pass --data_dir "
                "where it is already prepared."
            ) from None
    if len(splits) != 2:
        raise RecipeError(
            f"--dataset={name} has no `test` or `validation` split; the "
            "recipes evaluate on the real test split."
        )
    return splits


def _resolve_augment(augment, dataset, fixed):
    """The `make_pipeline(augment=...)` value of `--augment`.

    `fixed`: whether the images already have the models' size. Otherwise
    only "resize_crop" brings them there (a centre crop at test time).
    """
    if augment == "default":
        if not fixed:
            return "resize_crop"
        return None if dataset == "fashion_mnist" else "cifar"
    if augment != "resize_crop" and not fixed:
        raise RecipeError(
            f"--augment={augment} keeps the images' size, but they must be "
            "resized here (--image_size, or images of varying sizes). Use "
            "--augment=resize_crop (or default), or drop --image_size."
        )
    return None if augment == "none" else augment


def _subset(source, arrays, size, seed, random):
    if not size or (source.size is not None and size >= source.size):
        return source, arrays
    if size < 0:
        raise RecipeError(f"--train_size/--test_size must be >= 0: {size}.")
    if arrays is not None and random:
        keep = np.sort(
            np.random.default_rng(seed).permutation(len(arrays[1]))[:size]
        )
        x, y = arrays[0][keep], arrays[1][keep]
        subset = edu_data.from_arrays(x, y, class_names=source.class_names)
        return subset, (x, y)
    # Folders are shuffled once when listed and TFDS files are shuffled
    # when prepared, so the first examples are a random subset.
    labels = source.labels[:size] if source.labels is not None else None
    return (
        dataclasses.replace(
            source, dataset=source.dataset.take(size), size=size, labels=labels
        ),
        None,
    )


# Decoded images the training pipeline may keep in memory (cache and
# shuffle buffer). Fashion-MNIST (47 MB) and CIFAR-100 (150 MB) fit whole;
# Food-101's full-size images (about 60 GB) do not.
MEMORY_BUDGET_BYTES = 2 * 1024**3


def pipeline(source, data, batch_size, training, seed=None):
    """`make_pipeline` with the data set's preprocessing.

    Small data sets are cached decoded and shuffled uniformly; large ones
    (or images of unknown size) are read again each epoch, through a
    shuffle buffer of about a quarter of `MEMORY_BUDGET_BYTES`.
    """
    shape = source.image_shape
    image_bytes = int(np.prod(shape)) if None not in shape else 512 * 512 * 3
    fits = (
        source.size is not None
        and source.size * image_bytes <= MEMORY_BUDGET_BYTES
    )
    buffer = source.size if fits else MEMORY_BUDGET_BYTES // 4 // image_bytes
    try:
        return edu_data.make_pipeline(
            source,
            batch_size=batch_size,
            training=training,
            augment=data.augment,
            normalize=data.normalize,
            cache=fits,
            shuffle_buffer=max(int(buffer or 1), 1),
            seed=seed,
            image_shape=data.image_shape,
        )
    except ValueError as error:
        raise RecipeError(f"--dataset={data.name}: {error}") from None


def materialize(source, normalize, augment, image_shape, batch_size=512):
    """The preprocessed images and labels of a source as NumPy arrays."""
    try:
        batches = edu_data.make_pipeline(
            source,
            batch_size=batch_size,
            training=False,
            augment=augment if augment == "resize_crop" else None,
            normalize=normalize,
            cache=False,
            image_shape=image_shape,
        )
    except ValueError as error:
        raise RecipeError(f"--dataset: {error}") from None
    xs, ys = [], []
    for x, y in batches.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise RecipeError(
            "The test split is empty; check --dataset and --test_size."
        )
    return np.concatenate(xs), np.concatenate(ys).astype("int32")


def fit_inputs(data, settings, source=None, arrays=None):
    """Keyword arguments of `fit` for a training split.

    In-memory data without augmentation is fed as NumPy arrays (fast on
    every backend); everything else as a shuffled, augmented `tf.data`
    pipeline. `source`/`arrays` default to the whole training split.
    """
    if source is None and arrays is None:
        source, arrays = data.train, data.train_arrays
    if arrays is not None:
        x, y = arrays
        return {
            "x": x,
            "y": np.asarray(y, "int32"),
            "batch_size": settings.batch_size,
        }
    return {
        "x": pipeline(source, data, settings.batch_size, True, settings.seed)
    }


def unbatched_inputs(data, settings):
    """The training split for a curriculum: arrays, or unbatched `tf.data`."""
    inputs = fit_inputs(data, settings)
    if "y" in inputs:
        return inputs
    return {"x": inputs["x"].unbatch(), "batch_size": settings.batch_size}


# --------------------------------------------------------------- models


_CNN = re.compile(r"cnn(\d+)")


def arch_names():
    return keras_edu.models.names() + ["cnn<W> (e.g. cnn16)"]


def check_arch(arch, flag):
    """Refuses an unknown architecture name before any data is loaded."""
    key = str(arch).strip().lower().replace("-", "_")
    match = _CNN.fullmatch(key)
    if (match and int(match.group(1)) > 0) or key in keras_edu.models.names():
        return
    close = difflib.get_close_matches(
        key, keras_edu.models.names(), n=3, cutoff=0.6
    )
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise RecipeError(
        f"Unknown --{flag}={arch}.{hint} Valid: "
        f"{', '.join(keras_edu.models.names())}, or `cnn<W>`, the recipes' "
        "3-conv CNN with W, 2W, 4W channels (e.g. cnn16)."
    )


def build_model(arch, num_classes, input_shape, weight_decay=0.0, name=None):
    """A zoo architecture, or the recipes' small CNN `cnn<W>`.

    `cnn<W>` is three stages of one 3x3 conv + BN + ReLU with `W`, `2W`,
    `4W` channels and strides 1, 2, 2, then a flatten and a dense layer:
    fast on a CPU, and split into grades at the layers `stage{k}_out` like
    the zoo.
    """
    match = _CNN.fullmatch(str(arch).strip().lower())
    if match and int(match.group(1)) > 0:
        return _cnn(
            int(match.group(1)),
            num_classes,
            input_shape,
            weight_decay,
            name or str(arch),
        )
    try:
        kwargs = {"name": name} if name else {}
        return keras_edu.models.get(
            arch,
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            weight_decay=weight_decay,
            **kwargs,
        )
    except ValueError as error:
        raise RecipeError(
            f"Unknown architecture {arch!r}: {error} The recipes also take "
            "`cnn<W>`, a 3-conv CNN with W, 2W, 4W channels (e.g. cnn16)."
        ) from None


def _cnn(width, num_classes, input_shape, weight_decay, name):
    regularizer = (
        keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    )
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    for stage, (factor, stride) in enumerate(zip((1, 2, 4), (1, 2, 2)), 1):
        x = keras.layers.Conv2D(
            width * factor,
            3,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_regularizer=regularizer,
            name=f"stage{stage}_conv",
        )(x)
        x = keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, name=f"stage{stage}_bn"
        )(x)
        x = keras.layers.ReLU(name=f"stage{stage}_out")(x)
    # Flatten rather than global pooling: on Fashion-MNIST the spatial
    # layout is worth ~3 points of top-1 to such a shallow network (0.901
    # vs 0.870 for cnn8 after 3 epochs).
    x = keras.layers.Flatten(name="head_flatten")(x)
    outputs = keras.layers.Dense(
        num_classes, kernel_regularizer=regularizer, name="logits"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def parse_partition(spec, num_classes, flag="partition"):
    """`--partition` -> `ClassPartition`.

    Either ratios (`1:1:1`, contiguous label ranges) or explicit groups of
    class ids separated by `;` (`0,2,4;1,3;5,6,7,8,9`).
    """
    try:
        if ";" in spec or "," in spec:
            groups = [
                [int(c) for c in part.split(",") if c.strip()]
                for part in spec.split(";")
            ]
            flat = sorted(c for g in groups for c in g)
            if flat != list(range(num_classes)):
                raise ValueError(
                    f"the groups must hold every class id 0..{num_classes - 1} "
                    "exactly once"
                )
            return keras_edu.ClassPartition.from_groups(groups)
        return keras_edu.ClassPartition.contiguous(num_classes, ratios=spec)
    except ValueError as error:
        raise RecipeError(
            f"--{flag}={spec} does not fit the {num_classes} classes of the "
            f"data set: {error}. Use ratios with at most {num_classes} parts "
            "(e.g. `1:1:1`) or explicit groups such as `0,1,2;3,4,5;6,7,8,9`."
        ) from None


# ------------------------------------------------------------- training


class TestEvaluator(keras.callbacks.Callback):
    """Times each epoch, then scores the student on the test split.

    Runs the student in inference mode on the real test split after every
    epoch and records the overall and per-group top-1. A graded student's
    logits cover the classes seen so far; they are mapped back to global
    class ids, so classes not seen yet count as errors.
    """

    def __init__(self, x, y, groups, batch_size=256):
        super().__init__()
        self.x, self.y = x, y
        self.groups = groups
        self.batch_size = batch_size
        self.top1 = []
        self.per_group = []
        self.grades = []
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 3))
        top1, per_group = self.score(self.model)
        self.top1.append(top1)
        self.per_group.append(per_group)
        self.grades.append(getattr(self.model, "grade", None))
        if logs is not None:
            logs["test_top1"] = top1

    def score(self, model):
        student = getattr(model, "student", model)
        logits = student.predict(self.x, batch_size=self.batch_size, verbose=0)
        predicted = np.argmax(logits, axis=-1)
        graded = getattr(model, "graded_student", None)
        if graded is not None:
            predicted = np.asarray(graded.classes_for_grade(model.grade))[
                predicted
            ]
        return top1_scores(predicted, self.y, self.groups)


def top1_scores(predicted, labels, groups):
    """Overall top-1 and the top-1 of each group (`None` when it is empty)."""
    correct = predicted == labels
    per_group = []
    for group in groups:
        members = np.isin(labels, group)
        per_group.append(
            float(correct[members].mean()) if members.any() else None
        )
    return float(correct.mean()), per_group


def fit_plain(model, data, settings, source=None, arrays=None, callbacks=()):
    """Trains a plain classifier with cross-entropy; returns the epoch times."""
    keras.utils.set_random_seed(settings.seed)
    model.compile(
        optimizer=make_optimizer(settings),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = EpochTimer()
    model.fit(
        epochs=settings.epochs,
        verbose=settings.verbose,
        callbacks=[timer, *schedule_callbacks(settings), *callbacks],
        **fit_inputs(data, settings, source, arrays),
    )
    return timer.seconds


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each training epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 3))


def check_input_shape(model, data, what):
    """Refuses a model whose input shape is not the data's image shape."""
    shape = (
        tuple(model.inputs[0].shape[1:])
        if getattr(model, "inputs", None)
        else None
    )
    if shape is not None and tuple(shape) != tuple(data.image_shape):
        raise RecipeError(
            f"{what} takes images of shape {shape}, but --dataset={data.name} "
            f"gives {tuple(data.image_shape)}. Use the data set it was trained "
            "on, pass --image_size to resize the images to its size, or "
            "retrain it on this data."
        )


# -------------------------------------------------------------- reports


def print_table(rows, columns, title=None, file=None):
    """Prints `rows` (dicts) as an aligned text table.

    Args:
        rows: Dicts holding the values.
        columns: `(header, key, format)` triples; `key` may be a callable
            of the row.
    """
    file = file or sys.stdout
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = key(row) if callable(key) else row.get(key)
            line.append("-" if value is None else format(value, fmt))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    if title:
        print(f"\n{title}", file=file)
    for index, line in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if column == 0 else c.rjust(w)
                for column, (c, w) in enumerate(zip(line, widths))
            ),
            file=file,
        )
        if index == 0:
            print("  ".join("-" * w for w in widths), file=file)


def format_groups(values):
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)
