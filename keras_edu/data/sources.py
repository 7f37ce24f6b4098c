"""Image sources from NumPy arrays and TensorFlow Datasets."""

import difflib

import numpy as np

from keras_edu.data._tf import tf
from keras_edu.data.image_source import ImageSource
from keras_edu.data.image_source import resolve_class_names


def from_arrays(x, y, class_names=None, num_classes=None):
    """An `ImageSource` over in-memory images and integer labels.

    Args:
        x: Images, shape `(N, height, width)` (grayscale) or
            `(N, height, width, channels)`, with raw pixel values in
            `[0, 255]`: uint8, or any integer/float dtype in that range
            (rounded to uint8). Floats already scaled to `[0, 1]` are
            rejected: multiply them by 255 first.
        y: Integer labels, shape `(N,)` or `(N, 1)` (as CIFAR ships them).
        class_names: Optional names of the classes, in label order.
        num_classes: Optional number of classes; defaults to
            `len(class_names)` or `max(y) + 1`.

    Returns:
        An `ImageSource` whose dataset yields `(uint8 image (H, W, C),
        int32 label)`.

    Example:

    ```python
    import numpy as np
    from keras_edu.data import from_arrays

    x = np.random.randint(0, 256, (100, 32, 32, 3), dtype="uint8")
    y = np.random.randint(0, 10, (100,))
    source = from_arrays(x, y, num_classes=10)
    source.size  # 100
    ```
    """
    x = _as_uint8_images(x)
    y = _as_int_labels(y, len(x))
    num_classes, class_names = resolve_class_names(class_names, num_classes, y)
    # Note: from_tensor_slices embeds the arrays in the graph, which is
    # fine up to ~2 GB (CIFAR-100 is 150 MB); stream bigger data instead.
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return ImageSource(
        dataset=dataset,
        num_classes=num_classes,
        class_names=class_names,
        image_shape=tuple(x.shape[1:]),
        size=len(x),
        labels=y,
    )


def _as_uint8_images(x):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]  # Grayscale: add the channel axis.
    if x.ndim != 4:
        raise ValueError(
            "`x` must have shape (N, height, width) or (N, height, width, "
            f"channels). Received: x.shape={x.shape}."
        )
    if x.dtype == np.uint8:
        return x
    if not (
        np.issubdtype(x.dtype, np.integer)
        or np.issubdtype(x.dtype, np.floating)
    ):
        raise ValueError(f"`x` must hold numbers. Received: x.dtype={x.dtype}.")
    if x.size:
        low, high = float(x.min()), float(x.max())
        if (
            not (np.isfinite(low) and np.isfinite(high))
            or low < 0
            or high > 255
        ):
            raise ValueError(
                "`x` must hold raw pixel values in [0, 255]. Received values "
                f"in [{low}, {high}]."
            )
        if np.issubdtype(x.dtype, np.floating) and 0 < high <= 1.0:
            raise ValueError(
                "`x` looks already scaled to [0, 1] (max value "
                f"{high}); sources hold raw pixels in [0, 255] and "
                "`make_pipeline(normalize=...)` does the scaling. Pass "
                "`x * 255` (or the original uint8 images)."
            )
    return np.round(x).astype(np.uint8)


def _as_int_labels(y, n):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(
            f"`y` must have shape ({n},) or ({n}, 1) to match `x`. "
            f"Received: y.shape={y.shape}. (One-hot labels? Pass "
            "`y.argmax(-1)`.)"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or np.any(y != np.round(y)):
            raise ValueError(
                f"`y` must hold integer class ids. Received dtype {y.dtype}."
            )
    if y.size and y.min() < 0:
        raise ValueError(
            f"`y` must hold class ids >= 0. Received a label {y.min()}."
        )
    return y.astype(np.int32)


def from_tfds(name, split, data_dir=None, download=True):
    """An `ImageSource` over a TensorFlow Datasets image classification set.

    Works for any TFDS dataset whose supervised keys are an image and a
    class label (`cifar10`, `cifar100`, `fashion_mnist`, `food101`,
    `caltech101`, `imagenette`, ...). Loaded with `as_supervised=True`.

    Args:
        name: TFDS name, optionally with config/version
            (`"cifar100"`, `"imagenette/320px-v2"`).
        split: TFDS split, slicing allowed (`"train"`, `"train[:90%]"`).
        data_dir: Optional TFDS data directory (default
            `~/tensorflow_datasets`).
        download: Whether TFDS may download and prepare the data.

    Returns:
        An `ImageSource` yielding `(uint8 image, int32 label)`; `image_shape`
        has `None` dimensions where the images' sizes vary (resize them in
        `make_pipeline(augment="resize_crop", image_shape=...)`).

    Example:

    ```python
    from keras_edu.data import from_tfds, make_pipeline

    train = from_tfds("cifar100", "train")
    train.num_classes  # 100
    batches = make_pipeline(train, 128, training=True, augment="cifar")
    ```
    """
    import tensorflow_datasets as tfds

    _check_tfds_name(name, tfds)
    dataset, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        download=download,
        as_supervised=True,
        with_info=True,
    )
    image_key, label_key = _image_classification_keys(name, info, tfds)
    label_feature = info.features[label_key]
    dataset = dataset.map(
        lambda image, label: (image, tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ImageSource(
        dataset=dataset,
        num_classes=label_feature.num_classes,
        class_names=tuple(label_feature.names),
        image_shape=tuple(info.features[image_key].shape),
        size=_split_size(info, split, dataset),
    )


def _check_tfds_name(name, tfds):
    base = name.split(":")[0].split("/")[0]
    known = tfds.list_builders()
    if base not in known:
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown TFDS dataset name={name!r}.{hint} See "
            "`tfds.list_builders()` for every name."
        )


def _image_classification_keys(name, info, tfds):
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f"TFDS dataset {name!r} has no (image, label) supervised keys "
            f"(supervised_keys={keys}); it is not an image classification "
            "dataset. Pick one such as cifar100 or food101."
        )
    image_key, label_key = keys
    image_feature, label_feature = (
        info.features[image_key],
        info.features[label_key],
    )
    if not isinstance(
        label_feature, tfds.features.ClassLabel
    ) or not isinstance(image_feature, tfds.features.Image):
        raise ValueError(
            f"TFDS dataset {name!r} maps {image_key!r} -> {label_key!r} "
            f"({type(image_feature).__name__} -> "
            f"{type(label_feature).__name__}), not Image -> ClassLabel; it "
            "is not an image classification dataset."
        )
    if image_feature.np_dtype != np.uint8:
        raise ValueError(
            f"TFDS dataset {name!r} has {image_feature.np_dtype} images; "
            "only uint8 images are supported."
        )
    return image_key, label_key


def _split_size(info, split, dataset):
    try:
        return int(info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError, AttributeError):
        cardinality = int(dataset.cardinality())
        return cardinality if cardinality >= 0 else None
