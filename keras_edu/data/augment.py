"""Standard augmentations, written with `tf.image`/`tf.gather` for `tf.data`.

They work on whole batches `(batch, height, width, channels)` with a
different random crop and flip per image: one vectorised map per batch is
~10x faster than a per-image map on small images (Fashion-MNIST, CIFAR),
where tf.data's per-element overhead dominates. Randomness comes from
stateless ops fed a seed per batch, so `make_pipeline(seed=...)` is
reproducible even though maps run in parallel (stateful `tf.image.random_*`
ops are not: parallel calls race for their state).

Why `tf.image` rather than Keras or KerasCV layers: these run in the
`tf.data` graph on every Keras backend, cost nothing to build, and cannot
break with a layer API change. KerasCV 0.9 is its last release and some of
its layers fail on the TensorFlow backend of Keras 3.
"""

import math

from keras_edu.data._tf import tf

PADDING = 4
# "resize_crop" resizes the shorter side to 8/7 of the crop size before
# cropping: 256 -> 224 in the standard ImageNet recipe.
RESIZE_RATIO = 8 / 7


def pad_crop_flip(images, seed, padding=PADDING):
    """The CIFAR augmentation: zero-pad, random crop back, random h-flip.

    Pads `padding` pixels on each side and crops a random window of the
    input's size, so it works for 32x32 CIFAR as for 28x28 Fashion-MNIST.
    Keeps the shape and dtype.

    Args:
        images: A batch `(batch, height, width, channels)`.
        seed: A `[2]` int tensor (stateless seed).
        padding: Pixels of zeros added on each side.
    """
    size = _spatial_size(images)
    padded = tf.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    return random_crop_flip(padded, seed, size)


def random_crop_flip(images, seed, size):
    """A random `size` window of each image, each flipped with p = 0.5.

    Args:
        images: A batch `(batch, height, width, channels)`, at least `size`.
        seed: A `[2]` int tensor (stateless seed).
        size: `(height, width)` of the crops.
    """
    top_seed, left_seed, flip_seed = _split(seed, 3)
    shape = tf.shape(images)
    batch, (height, width) = shape[0], size
    tops = tf.random.stateless_uniform(
        [batch], top_seed, 0, shape[1] - height + 1, dtype=tf.int32
    )
    lefts = tf.random.stateless_uniform(
        [batch], left_seed, 0, shape[2] - width + 1, dtype=tf.int32
    )
    flips = tf.random.stateless_uniform(
        [batch], flip_seed, 0, 2, dtype=tf.int32
    )
    rows = tops[:, None] + tf.range(height)[None, :]
    # A flipped crop reads its columns right to left.
    steps = tf.where(
        flips[:, None] == 1,
        width - 1 - tf.range(width)[None, :],
        tf.range(width)[None, :],
    )
    columns = lefts[:, None] + steps
    crops = tf.gather(images, rows, axis=1, batch_dims=1)
    crops = tf.gather(crops, columns, axis=2, batch_dims=1)
    return tf.ensure_shape(
        crops, [None, _static(height), _static(width), images.shape[-1]]
    )


def center_crop(images, size):
    """The central `size` window of each image of a batch."""
    shape = tf.shape(images)
    top = (shape[1] - size[0]) // 2
    left = (shape[2] - size[1]) // 2
    crops = images[:, top : top + size[0], left : left + size[1], :]
    return tf.ensure_shape(crops, [None, size[0], size[1], images.shape[-1]])


def resize_shorter_side(images, size):
    """Resizes a batch, keeping the aspect, so both sides >= size * 8/7.

    Returns float32 pixels in [0, 255] (antialiased bilinear).
    """
    target = math.ceil(max(size) * RESIZE_RATIO)
    static = images.shape[1:3]
    if None not in static:  # Known sizes: compute the new shape in Python.
        scale = target / min(static)
        new_shape = [max(math.ceil(d * scale), s) for d, s in zip(static, size)]
    else:
        shape = tf.cast(tf.shape(images)[1:3], tf.float32)
        new_shape = tf.cast(
            tf.math.ceil(shape * target / tf.reduce_min(shape)), tf.int32
        )
        # Guard against rounding leaving a side one pixel short of the crop.
        new_shape = tf.maximum(new_shape, tf.constant(size, tf.int32))
    return tf.image.resize(images, new_shape, method="bilinear", antialias=True)


def _spatial_size(images):
    height, width = images.shape[1:3]
    shape = tf.shape(images)
    return (
        height if height is not None else shape[1],
        width if width is not None else shape[2],
    )


def _static(dim):
    return dim if isinstance(dim, int) else None


def _split(seed, num):
    seeds = tf.random.experimental.stateless_split(seed, num=num)
    return [seeds[i] for i in range(num)]
