"""The recipes' data: `--dataset` -> training source, test arrays, `fit` inputs.

`load_data` reads Fashion-MNIST from local IDX files, a TensorFlow
Datasets name or a folder of class sub-folders into a `Data`: the training
split as a `keras_edu.data.ImageSource` (and as preprocessed arrays when it
is small and not augmented), the real test split as preprocessed arrays,
and how the images are normalised. `fit_inputs` turns it into the keyword
arguments of `fit`; `parse_partition` reads `--partition`.
"""

import dataclasses
import os
import re

from absl import flags
import numpy as np

from cli import RecipeError
import keras_edu
from keras_edu import data as edu_data
from keras_edu.data._tf import tf


# ---------------------------------------------------------------- flags


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


# -------------------------------------------------------------- loading


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


# -------------------------------------------------------------- classes


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
            f"data set: {str(error).rstrip('.')}. Use ratios with at most "
            f"{num_classes} parts (e.g. `1:1:1`) or explicit groups such as "
            "`0,1,2;3,4,5;6,7,8,9`."
        ) from None
