"""The recipes' data: `--dataset` -> training source, test arrays, `fit` inputs.

`load_data` reads Fashion-MNIST from local IDX files, a TensorFlow
Datasets name or a folder of class sub-folders into a `Data`: the training
split as a `keras_edu.data.ImageSource` (and as preprocessed arrays when it
is small and not augmented), the real test split as preprocessed arrays,
and how the images are normalised. `--train_size`/`--test_size` subsets
are seeded, class-balanced draws (`keras_edu.data.balanced_subset`).
`fit_inputs` turns a `Data` into the keyword arguments of `fit`;
`parse_partition` reads `--partition`.
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
from keras_edu.data.directory import IMAGE_EXTENSIONS


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
        "`H` or `H,W`: the size images are resized to. Default: the data's "
        "own size (image folders: the files' size when they all share one, "
        "else 64; TFDS sets whose images vary in size need it).",
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
        "Use only this many training images: a class-balanced draw seeded "
        "by --seed (see `keras_edu.data.balanced_subset`); 0: all.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "test_size",
        0,
        "Use only this many test images: a class-balanced draw seeded by "
        "--seed, as --train_size; 0: all.",
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
        examples_per_class: `{"train": [...], "test": [...]}`, the number
            of images of each class in each split (after `--train_size`/
            `--test_size`); `"train"` is `None` when the labels are not
            known without reading the data (a whole TFDS split).
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
    examples_per_class: dict = None

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
    exact_sizes=(),
):
    """Loads `--dataset` into a `Data`: train source and test arrays.

    Prints the preprocessing it chose (image size and why, normalisation,
    augmentation) and the images per class of each split.

    Args:
        dataset: `"fashion_mnist"`, a TFDS name (`"tfds:NAME"` forces
            TFDS), or a folder of class sub-folders.
        data_dir: Fashion-MNIST IDX folder or TFDS data directory.
        image_size: `None`, or `(H, W)` to resize to. `None` on a folder:
            the files' size when they all share one, else 64x64.
        test_fraction: Held-out share per class for image folders without
            a `test/` split.
        augment: One of `AUGMENTATIONS`.
        train_size, test_size: Subset sizes (0: all): seeded,
            class-balanced draws, see `balanced_subset_of`.
        seed: Seed of the subsets and held-out split.
        exact_sizes: The names (`"train_size"`, `"test_size"`) whose size
            must not exceed its split, e.g. those typed on the command
            line. The others are caps: presets such as `--quick` are sized
            for the full data set, and a smaller one is used whole.
    """
    if not dataset:
        raise RecipeError(
            "--dataset is empty. Pass `fashion_mnist`, a TFDS name such as "
            "`cifar100`, or a folder of class sub-folders."
        )
    arrays = None
    size_reason = "--image_size" if image_size else "the data's own size"
    if dataset == "fashion_mnist":
        (train, test), arrays = _fashion_mnist(data_dir)
        normalize, fixed = "fashion_mnist", True
    elif _looks_like_path(dataset):
        train, test, size_reason = _image_folder(
            dataset, image_size, test_fraction, seed
        )
        normalize = "imagenet" if train.image_shape[-1] == 3 else True
        fixed = True
    else:
        train, test = _tfds(
            dataset, data_dir, need_labels=(bool(train_size), bool(test_size))
        )
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
    train, arrays = balanced_subset_of(
        train, arrays, train_size, seed, "train_size", exact_sizes
    )
    test, _ = balanced_subset_of(
        test, None, test_size, seed, "test_size", exact_sizes
    )
    test_x, test_y = materialize(test, normalize, augment, image_shape)
    train_labels = arrays[1] if arrays is not None else train.labels
    if arrays is not None and augment is None:
        source = edu_data.from_arrays(arrays[0], arrays[1])
        arrays = (
            materialize(source, normalize, None, image_shape)[0],
            arrays[1],
        )
    else:
        arrays = None
    data = Data(
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
        examples_per_class={
            "train": _class_counts(train_labels, train.num_classes),
            "test": _class_counts(test_y, train.num_classes),
        },
    )
    print(describe(data, size_reason))
    return data


def _class_counts(labels, num_classes):
    if labels is None:
        return None
    return np.bincount(labels, minlength=num_classes).tolist()


def describe(data, size_reason):
    """One line on the preprocessing chosen and the images per class."""
    normalize = data.normalize
    if normalize is True:
        normalize = "pixels / 255"
    elif isinstance(normalize, str):
        normalize = f"the {normalize} mean/std"
    splits = []
    for split, counts in data.examples_per_class.items():
        if counts is None:
            splits.append(f"{split} {data.train.size or 'all'}")
            continue
        low, high = min(counts), max(counts)
        each = f"{low}" if low == high else f"{low}-{high}"
        splits.append(f"{split} {sum(counts)} ({each} per class)")
    height, width, channels = data.image_shape
    return (
        f"Data: {data.name}: {height}x{width}x{channels} images "
        f"({size_reason}), normalised with {normalize}, augmentation "
        f"{data.augment or 'none'}; {', '.join(splits)} images."
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
        exact_sizes=[
            name
            for name in ("train_size", "test_size")
            if flag_values[name].present
        ],
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
    image_size, size_reason = folder_image_size(path, image_size)
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
            return train, test, size_reason
        source = edu_data.from_directory(path, image_size, seed=seed)
    except ValueError as error:
        raise RecipeError(f"--dataset={path}: {error}") from None
    if not 0 < test_fraction < 1:
        raise RecipeError(
            f"--test_fraction must be in (0, 1). Received: {test_fraction}."
        )
    return (*holdout_split(source, test_fraction, seed), size_reason)


# Image folders whose files differ in size are resized to this by default.
DEFAULT_FOLDER_IMAGE_SIZE = (64, 64)


def folder_image_size(path, image_size=None):
    """The `(H, W)` to resize a folder's images to, and why (for the log).

    `image_size` (`--image_size`) when given; else the size every image
    under `path` shares (so CIFAR-sized folders stay 32x32); else, when
    they differ, `DEFAULT_FOLDER_IMAGE_SIZE`.
    """
    if image_size is not None:
        return tuple(image_size), "--image_size"
    sizes = _file_image_sizes(path)
    if len(sizes) == 1:
        return sizes.pop(), "the files' size"
    if not sizes:  # No readable image: `from_directory` says why.
        return DEFAULT_FOLDER_IMAGE_SIZE, "the default"
    by_area = sorted(sizes, key=lambda size: (size[0] * size[1], size))
    (h0, w0), (h1, w1) = by_area[0], by_area[-1]
    height, width = DEFAULT_FOLDER_IMAGE_SIZE
    return DEFAULT_FOLDER_IMAGE_SIZE, (
        f"resized to the default {height}x{width}: the files range from "
        f"{h0}x{w0} to {h1}x{w1}; --image_size=H,W chooses"
    )


def _file_image_sizes(path):
    """The distinct `(height, width)` of the images in `path`'s sub-folders.

    Pillow reads only each file's header (tens of microseconds a file).
    Unreadable files are skipped: `from_directory` names them.
    """
    from PIL import Image

    sizes = set()
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if root == path:
            continue  # Loose files beside the class folders are not used.
        for name in names:
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            try:
                with Image.open(os.path.join(root, name)) as image:
                    width, height = image.size
            except Exception:  # Pillow raises OSError, SyntaxError, ...
                continue
            sizes.add((height, width))
    return sizes


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
    return (
        select_examples(source, ~is_test),
        select_examples(source, is_test),
    )


def select_examples(source, keep):
    """The examples of a source with known labels where `keep` is true.

    The order is kept; so is the cardinality, for Keras' steps per epoch.
    """
    mask = tf.constant(keep)
    dataset = (
        source.dataset.enumerate()
        .filter(lambda i, example: mask[i])
        .map(lambda i, example: example)
    )
    labels = source.labels[keep]
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(len(labels))
    )
    return dataclasses.replace(
        source, dataset=dataset, size=len(labels), labels=labels
    )


def _tfds(name, data_dir, need_labels=(False, False)):
    """Train and test sources of a TFDS data set (`validation` if no `test`).

    `need_labels`: for each split, whether to read its labels (a pass over
    the records without decoding the images), which a subset needs.
    """
    tfds_name = name.removeprefix("tfds:")
    splits = []
    for split in ("train", "test", "validation"):
        if split == "validation" and len(splits) == 2:
            break
        try:
            source = edu_data.from_tfds(tfds_name, split, data_dir=data_dir)
            if need_labels[len(splits)]:
                labels = _tfds_labels(tfds_name, split, data_dir)
                source = dataclasses.replace(
                    source, labels=labels, size=len(labels)
                )
            splits.append(source)
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


def _tfds_labels(name, split, data_dir):
    """A TFDS split's labels in `from_tfds` order, images left undecoded."""
    import tensorflow_datasets as tfds

    image_key = tfds.builder(name, data_dir=data_dir).info.supervised_keys[0]
    records = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        as_supervised=True,
        decoders={image_key: tfds.decode.SkipDecoding()},
    )
    batches = records.map(lambda image, label: label).batch(8192)
    labels = [np.asarray(b) for b in batches.as_numpy_iterator()]
    return np.concatenate(labels).astype(np.int32)


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


def balanced_subset_of(source, arrays, size, seed, flag, exact_sizes=()):
    """`--train_size`/`--test_size`: a seeded, class-balanced subset.

    `keras_edu.data.balanced_subset` draws the images (its docstring has
    the rule: `size // num_classes` per class, one more for the first
    `size % num_classes` classes, a short class's lack spread over the
    others). The draw depends only on the labels, `size` and `seed`, so
    every method of a comparison trains and is tested on the same images.

    Args:
        source: The split's `ImageSource`, with `labels` when `size > 0`.
        arrays: `(x, y)` of the split in memory, or `None`.
        size: Images to keep; 0: all.
        seed: `--seed`.
        flag: `"train_size"` or `"test_size"`, for the messages.
        exact_sizes: As in `load_data`: whether a `size` larger than the
            split is an error (`flag` listed) or means the whole split.

    Returns:
        `(source, arrays)` of the subset (`arrays` `None` when not given).
    """
    if size < 0:
        raise RecipeError(f"--{flag} must be >= 0 (0: all). Received: {size}.")
    if not size:
        return source, arrays
    labels = arrays[1] if arrays is not None else source.labels
    split = "training" if flag == "train_size" else "test"
    if size < source.num_classes:
        raise RecipeError(
            f"--{flag}={size} is smaller than the {source.num_classes} "
            "classes: a class-balanced subset needs at least one image of "
            f"each. Pass --{flag}={source.num_classes} or more, or 0 for "
            "all."
        )
    if size >= len(labels):
        if size > len(labels) and flag in exact_sizes:
            raise RecipeError(
                f"--{flag}={size} is more than the {len(labels)} images of "
                f"the {split} split. Pass --{flag}={len(labels)} or less, "
                "or 0 for all."
            )
        return source, arrays
    keep = edu_data.balanced_subset(
        labels, size, seed=seed, num_classes=source.num_classes
    )
    if arrays is not None:
        x, y = arrays[0][keep], arrays[1][keep]
        subset = edu_data.from_arrays(x, y, class_names=source.class_names)
        return subset, (x, y)
    is_kept = np.zeros(len(labels), bool)
    is_kept[keep] = True
    return select_examples(source, is_kept), None


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
