"""An image source from a folder of class sub-folders."""

import concurrent.futures
import os

import numpy as np

from keras_edu.data._tf import tf
from keras_edu.data.image_source import ImageSource
from keras_edu.data.image_source import resolve_class_names

# The formats `tf.io.decode_image` reads; other files are ignored, as in
# `keras.utils.image_dataset_from_directory`.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# PIL format names `tf.io.decode_image` decodes (MPO: camera JPEGs).
_TF_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF")
_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_LAYOUT = (
    "Expected one sub-folder per class:\n"
    "  {path}/\n"
    "    class_a/ img_001.jpg, img_002.jpg, ...\n"
    "    class_b/ img_101.jpg, ..."
)


def from_directory(
    path,
    image_size,
    color_mode="rgb",
    class_names=None,
    validate=True,
    shuffle=True,
    seed=None,
    interpolation="bilinear",
):
    """An `ImageSource` over a folder with one sub-folder of images per class.

    The layout of Caltech-256, Tiny-ImageNet's `train/` or
    `keras.utils.image_dataset_from_directory`: labels are the sorted
    sub-folder names (or `class_names`' order); images are found
    recursively inside each class folder (`.jpg`, `.jpeg`, `.png`, `.bmp`,
    `.gif`; other files are ignored). Images are decoded with
    `tf.io.decode_image` in a parallel `tf.data` map and resized to
    `image_size`.

    Corrupt files: a `tf.data` decode error does not say which file failed,
    so with `validate=True` (default) every file is decoded once up front
    with Pillow (JPEGs at 1/8 scale, which still reads all their data, so
    truncated files are caught) using a thread pool. All bad files are
    reported in one `ValueError` naming each of them. This costs about
    0.4 ms per small image on 2 CPU cores (0.8 s for 2,000 64x64 JPEGs); pass `validate=False` to skip it for
    trusted data (a bad file then stops training with TensorFlow's
    `InvalidArgumentError`, which does not name the file).

    Args:
        path: The root folder.
        image_size: `(height, width)` (or one int for squares) every image
            is resized to, so that they can be batched.
        color_mode: `"rgb"` (3 channels), `"grayscale"` (1) or `"rgba"` (4).
        class_names: Optional list of sub-folder names to use, in label
            order; by default every sub-folder, sorted.
        validate: Whether to check every file decodes before returning.
        shuffle: Whether to shuffle the file order once, so that classes
            are mixed even with a small `make_pipeline` shuffle buffer.
        seed: Seed of that shuffle.
        interpolation: `tf.image.resize` method, e.g. `"bilinear"`, `"area"`.

    Returns:
        An `ImageSource` yielding `(uint8 image (height, width, channels),
        int32 label)`, with `labels` known.

    Example:

    ```python
    import os, tempfile
    import numpy as np
    from PIL import Image
    from keras_edu.data import from_directory

    root = tempfile.mkdtemp()
    for name in ("cat", "dog"):
        os.makedirs(os.path.join(root, name))
        for i in range(3):
            pixels = np.random.randint(0, 256, (40, 50, 3), dtype="uint8")
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.jpg"))
    source = from_directory(root, image_size=(32, 32))
    source.class_names  # ('cat', 'dog')
    source.image_shape  # (32, 32, 3)
    ```
    """
    path = os.fspath(path)
    image_size = _check_image_size(image_size)
    if color_mode not in _CHANNELS:
        raise ValueError(
            f"`color_mode` must be one of {sorted(_CHANNELS)}. "
            f"Received: color_mode={color_mode!r}."
        )
    class_names = _class_folders(path, class_names)
    files, labels = _list_images(path, class_names)
    if validate:
        _validate_images(files)
    num_classes, class_names = resolve_class_names(class_names, None, labels)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(files))
        files, labels = [files[i] for i in order], labels[order]
    channels = _CHANNELS[color_mode]

    def load(filename, label):
        image = tf.io.decode_image(
            tf.io.read_file(filename),
            channels=channels,
            expand_animations=False,
        )
        image = tf.image.resize(image, image_size, method=interpolation)
        # Back to uint8 (the ImageSource convention) so caches stay small.
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((files, labels)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE
    )
    return ImageSource(
        dataset=dataset,
        num_classes=num_classes,
        class_names=class_names,
        image_shape=(*image_size, channels),
        size=len(files),
        labels=labels,
    )


def _check_image_size(image_size):
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(s, int) and s > 0 for s in image_size)
    ):
        raise ValueError(
            "`image_size` must be (height, width) with positive ints, e.g. "
            f"(64, 64). Received: image_size={image_size!r}."
        )
    return tuple(image_size)


def _class_folders(path, class_names):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"`path` is not a directory: {path!r}.")
    folders = sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not folders:
        loose = [
            f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        found = f" It holds {len(loose)} images directly." if loose else ""
        raise ValueError(
            f"`path`={path!r} has no class sub-folders.{found} "
            + _LAYOUT.format(path=path)
            + "\nMove each class's images into its own sub-folder."
        )
    if class_names is None:
        return folders
    missing = [name for name in class_names if name not in folders]
    if missing:
        raise ValueError(
            f"`class_names` {missing} are not sub-folders of {path!r}. "
            f"Its sub-folders are: {folders}."
        )
    return list(class_names)


def _list_images(path, class_names):
    files, labels = [], []
    for label, name in enumerate(class_names):
        for root, dirs, names in os.walk(
            os.path.join(path, name), followlinks=True
        ):
            dirs.sort()  # os.walk order is arbitrary; keep labels reproducible.
            for filename in sorted(names):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(root, filename))
                    labels.append(label)
    if not files:
        raise ValueError(
            f"Found no images ({', '.join(IMAGE_EXTENSIONS)}) in the class "
            f"sub-folders of {path!r}. " + _LAYOUT.format(path=path)
        )
    return files, np.asarray(labels, np.int32)


def _validate_images(files):
    """Decodes every file with Pillow; raises one error naming all bad ones."""
    try:
        from PIL import Image  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "`from_directory(validate=True)` needs Pillow: `pip install "
            "pillow`, or pass validate=False."
        ) from error
    # Pillow releases the GIL while decoding, so threads overlap I/O and
    # decoding even on a 2-core machine.
    workers = min(16, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        problems = [
            (f, p) for f, p in zip(files, pool.map(_image_problem, files)) if p
        ]
    if problems:
        listed = "\n".join(f"  {f}: {p}" for f, p in problems[:20])
        more = (
            f"\n  ... and {len(problems) - 20} more"
            if len(problems) > 20
            else ""
        )
        raise ValueError(
            f"{len(problems)} of {len(files)} image file(s) cannot be "
            f"decoded:\n{listed}{more}\nDelete or replace them (or pass "
            "validate=False to skip this check)."
        )


def _image_problem(filename):
    """`None` when `filename` decodes fully, else a short reason."""
    from PIL import Image

    try:
        with Image.open(filename) as image:
            if image.format not in _TF_FORMATS:
                return (
                    f"{image.format} format: tf.io.decode_image can't read it"
                )
            # JPEG: decode at 1/8 scale; all entropy-coded data is still
            # read, so truncation is detected, at a fraction of the cost.
            image.draft("RGB", (1, 1))
            image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, ...
        return f"{type(error).__name__}: {error}"
    return None
