"""`make_pipeline`: cache, shuffle, augment, batch, normalise, prefetch."""

from keras_edu.data import augment as augment_lib
from keras_edu.data._tf import tf
from keras_edu.data.image_source import ImageSource

# Per-channel (mean, std) of the training sets, in [0, 1] pixel units.
NORMALIZATION_PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
AUGMENTATIONS = ("cifar", "resize_crop")


def make_pipeline(
    dataset,
    batch_size,
    training,
    augment=None,
    normalize=True,
    cache=True,
    shuffle_buffer=10_000,
    seed=None,
    image_shape=None,
    drop_remainder=False,
):
    """A batched `tf.data` input pipeline ready for `model.fit`.

    Steps, in order: `cache()` (decoded uint8 images, so decoding happens
    once and augmentation stays fresh each epoch), `shuffle()` (training
    only, reshuffled each epoch), `batch()`, augmentation and normalisation
    (one parallel, vectorised map per batch, with a random crop/flip per
    image), `prefetch()`. Callables and `"resize_crop"` of images of
    varying sizes run per image, before `batch()`.
    `tf.data` pipelines feed `model.fit` on every Keras backend.

    Args:
        dataset: An `ImageSource` or an unbatched `tf.data.Dataset` of
            `(image, label)` with `(height, width[, channels])` images of
            raw pixel values in [0, 255].
        batch_size: Examples per batch.
        training: `True` shuffles and augments; `False` keeps the order
            and applies only the deterministic part of `augment`.
        augment: `None`; `"cifar"`: pad 4 pixels, random crop back to the
            input size, random horizontal flip (for 32x32 CIFAR, 28x28
            Fashion-MNIST, ...); `"resize_crop"`: for larger or varying
            images, resize the shorter side to 8/7 of the output size,
            random crop to `image_shape` (default: the input size) and
            random horizontal flip, or a centre crop when `training=False`;
            or a callable `image -> image` (tf ops or Keras preprocessing
            layers), applied in training only.
        normalize: `True` scales to [0, 1]; `False` keeps [0, 255];
            `(mean, std)` or a preset name (`"imagenet"`, `"cifar10"`,
            `"cifar100"`, `"fashion_mnist"`) scales to [0, 1] then
            computes `(x - mean) / std` per channel. Images are float32.
        cache: `True` caches in memory, a filename caches on disk,
            `False` does not cache.
        shuffle_buffer: Shuffle buffer size (training only). Use at least
            the dataset size for a uniform shuffle when it fits in memory.
        seed: Optional int making shuffling and augmentation reproducible.
        image_shape: Optional `(height, width, channels)` the batches must
            have (e.g. the model's input shape). A mismatch raises
            `ValueError`; with `augment="resize_crop"` it is the output
            size.
        drop_remainder: Whether to drop the last, smaller batch.

    Returns:
        A `tf.data.Dataset` of `(float32 images (batch, H, W, C), int32
        labels (batch,))` (integer labels are cast to int32).

    Example:

    ```python
    import numpy as np
    from keras_edu.data import from_arrays, make_pipeline

    x = np.random.randint(0, 256, (64, 28, 28), dtype="uint8")
    y = np.random.randint(0, 10, (64,))
    train = make_pipeline(
        from_arrays(x, y), batch_size=16, training=True, augment="cifar",
        normalize="fashion_mnist", seed=0,
    )
    images, labels = next(iter(train))  # (16, 28, 28, 1) float32, (16,)
    ```
    """
    if isinstance(dataset, ImageSource):
        dataset = dataset.dataset
    _check_positive_int(batch_size, "batch_size")
    dataset, input_shape = _with_channel_axis(dataset)
    output_size = _check_image_shape(input_shape, image_shape, augment)
    mean_std = _mean_std(normalize, input_shape[-1])

    if cache:
        dataset = (
            dataset.cache() if cache is True else dataset.cache(str(cache))
        )
    if training:
        _check_positive_int(shuffle_buffer, "shuffle_buffer")
        dataset = dataset.shuffle(
            shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )
    dataset = _augment_images(dataset, augment, training, output_size, seed)
    dataset = dataset.batch(
        batch_size,
        drop_remainder=drop_remainder,
        num_parallel_calls=tf.data.AUTOTUNE,
    )

    def finish(batch, batch_seed):
        images, labels = batch
        images = _augment_batch(
            images, batch_seed, augment, training, output_size
        )
        if labels.dtype.is_integer:
            labels = tf.cast(labels, tf.int32)
        return _normalize(images, normalize, mean_std), labels

    # One seed per batch; augmenting whole batches is much cheaper than
    # per-image maps for small images (see augment.py).
    dataset = tf.data.Dataset.zip((dataset, _seeds(seed))).map(
        finish, num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive int. Received: {name}={value!r}."
        )


def _with_channel_axis(dataset):
    """Checks `(image, label)` elements; adds a channel axis to 2-D images."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            "`dataset` must yield `(image, label)` pairs (use "
            "`as_supervised=True` for TFDS). Received elements: "
            f"{spec}."
        )
    rank = spec[0].shape.rank
    if rank == 2:
        dataset = dataset.map(
            lambda image, label: (image[..., tf.newaxis], label)
        )
    elif rank == 4:
        raise ValueError(
            "`dataset` is already batched (images of shape "
            f"{tuple(spec[0].shape)}). Pass the unbatched dataset, e.g. "
            "`dataset.unbatch()`, and set `batch_size` here."
        )
    elif rank != 3:
        raise ValueError(
            "`dataset` images must have shape (height, width[, channels]). "
            f"Received: {spec[0].shape}."
        )
    return dataset, tuple(dataset.element_spec[0].shape)


def _check_image_shape(input_shape, image_shape, augment):
    """The crop size of "resize_crop"; checks shapes against `image_shape`."""
    if (
        augment is not None
        and not callable(augment)
        and augment not in AUGMENTATIONS
    ):
        raise ValueError(
            f"`augment` must be None, one of {AUGMENTATIONS} or a callable. "
            f"Received: augment={augment!r}."
        )
    if image_shape is not None:
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(
                "`image_shape` must be (height, width, channels). "
                f"Received: image_shape={image_shape}."
            )
    if augment == "resize_crop":
        size = image_shape[:2] if image_shape else input_shape[:2]
        if None in size:
            raise ValueError(
                f'augment="resize_crop" needs an output size, but the images '
                f"have shape {input_shape}. Pass image_shape=(height, width, "
                "channels)."
            )
        if (
            image_shape
            and None not in input_shape[2:]
            and input_shape[2] != image_shape[2]
        ):
            raise _shape_error(input_shape, image_shape, "channels")
        return tuple(size)
    if image_shape is not None:
        known = all(d is not None for d in input_shape)
        if known and input_shape != image_shape:
            raise _shape_error(input_shape, image_shape, "size")
    return None


def _shape_error(input_shape, image_shape, what):
    if what == "channels":
        fix = (
            "convert the images' channels (e.g. from_directory(color_mode=...)"
            " or tf.image.grayscale_to_rgb)"
        )
    else:
        fix = (
            "resize the source (e.g. from_directory(..., image_size=...)), "
            'use augment="resize_crop" to resize and crop to image_shape'
        )
    return ValueError(
        f"The dataset's images have shape {input_shape} but "
        f"image_shape={image_shape} was expected. Fix: {fix}, or pass the "
        "image_shape the model really takes."
    )


def _seeds(seed):
    """An endless dataset of `[2]` int64 stateless seeds, new each epoch."""
    return tf.data.Dataset.random(
        seed=seed, rerandomize_each_iteration=True
    ).batch(2)


def _augment_images(dataset, augment, training, output_size, seed):
    """Per-image stage: callables, and "resize_crop" of varying sizes."""
    if callable(augment) and training:
        return dataset.map(
            lambda image, label: (augment(image), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    varying = None in dataset.element_spec[0].shape
    if augment != "resize_crop" or not varying:
        return dataset

    # Images of different sizes must reach one size before `batch()`; the
    # batch functions run on a batch of one.
    def resize_crop(image, element_seed):
        images = augment_lib.resize_shorter_side(image[tf.newaxis], output_size)
        if training:
            images = augment_lib.random_crop_flip(
                images, element_seed, output_size
            )
        else:
            images = augment_lib.center_crop(images, output_size)
        return images[0]

    return tf.data.Dataset.zip((dataset, _seeds(seed))).map(
        lambda example, s: (resize_crop(example[0], s), example[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _augment_batch(images, batch_seed, augment, training, output_size):
    """Batch stage: "cifar" and fixed-size "resize_crop", vectorised."""
    if augment == "cifar" and training:
        return augment_lib.pad_crop_flip(images, batch_seed)
    if augment == "resize_crop" and None not in images.shape[1:]:
        images = augment_lib.resize_shorter_side(images, output_size)
        if training:
            return augment_lib.random_crop_flip(images, batch_seed, output_size)
        return augment_lib.center_crop(images, output_size)
    return images


def _mean_std(normalize, channels):
    if normalize is True or normalize is False or normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize not in NORMALIZATION_PRESETS:
            raise ValueError(
                f"Unknown `normalize` preset {normalize!r}. Use one of "
                f"{sorted(NORMALIZATION_PRESETS)}, True, False or (mean, std)."
            )
        normalize = NORMALIZATION_PRESETS[normalize]
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalize)
    except (TypeError, ValueError):
        raise ValueError(
            "`normalize` must be True, False, a preset name or a "
            "(mean, std) pair of per-channel sequences. "
            f"Received: normalize={normalize!r}."
        ) from None
    if len(mean) != len(std) or (
        channels is not None and len(mean) not in (1, channels)
    ):
        raise ValueError(
            f"`normalize` mean/std have {len(mean)}/{len(std)} values but the "
            f"images have {channels} channels. Give one value per channel."
        )
    if any(s <= 0 for s in std):
        raise ValueError(
            f"`normalize` std values must be > 0. Received: {std}."
        )
    return mean, std


def _normalize(images, normalize, mean_std):
    images = tf.cast(images, tf.float32)
    if normalize is False or normalize is None:
        return images
    images = images / 255.0
    if mean_std is None:
        return images
    mean, std = mean_std
    return (images - tf.constant(mean)) / tf.constant(std)
