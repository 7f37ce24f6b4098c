"""Fashion-MNIST from local IDX files first, the network last."""

import gzip
import os

import numpy as np

FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Base names of the four IDX files; each may be stored gzipped (`.gz`, as
# Keras and Debian ship them) or already decompressed.
_FILES = (
    ("x_train", "train-images-idx3-ubyte"),
    ("y_train", "train-labels-idx1-ubyte"),
    ("x_test", "t10k-images-idx3-ubyte"),
    ("y_test", "t10k-labels-idx1-ubyte"),
)
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.


def load_fashion_mnist(path=None):
    """Loads Fashion-MNIST, reading local files before any download.

    The four IDX files (`train-images-idx3-ubyte.gz`,
    `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
    `t10k-labels-idx1-ubyte.gz`, gzipped or not) are looked up in this order:

    1. `path`, when given. An explicit `path` without the files raises at
       once rather than silently falling back to another copy.
    2. The Keras cache, `$KERAS_HOME/datasets/fashion-mnist/` (by default
       `~/.keras/datasets/fashion-mnist/`), then `/tmp/.keras/...`, where
       Keras writes when the home directory is read-only.
    3. Debian's `dataset-fashion-mnist` package,
       `/usr/share/datasets/fashion-mnist/`.
    4. `keras.datasets.fashion_mnist.load_data()`, which downloads.

    Args:
        path: Optional directory holding the four IDX files.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: uint8 images of shape
        `(N, 28, 28)` and uint8 labels in `[0, 10)` of shape `(N,)`, the
        same arrays as `keras.datasets.fashion_mnist.load_data()`. Class
        names are in `FASHION_MNIST_CLASS_NAMES`.

    Raises:
        FileNotFoundError: No copy was found and the download failed; the
            message says how to get the data.
        ValueError: A file was found but is truncated or not an IDX file.

    Example:

    ```python
    from keras_edu.data import load_fashion_mnist, from_arrays
    from keras_edu.data import FASHION_MNIST_CLASS_NAMES

    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train.shape  # (60000, 28, 28)
    train = from_arrays(x_train, y_train, class_names=FASHION_MNIST_CLASS_NAMES)
    ```
    """
    if path is not None:
        arrays = _load_from_dir(os.fspath(path))
        if arrays is None:
            raise FileNotFoundError(_not_found_message([os.fspath(path)]))
        return arrays
    searched = _search_dirs()
    for directory in searched:
        arrays = _load_from_dir(directory)
        if arrays is not None:
            return arrays
    try:
        return _download()
    except Exception as error:  # Keras raises a bare Exception on URL errors.
        raise FileNotFoundError(
            _not_found_message(searched, download_error=error)
        ) from error


def _search_dirs():
    """Local directories to search, in order (tests monkeypatch this)."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return [
        os.path.join(keras_home, "datasets", "fashion-mnist"),
        os.path.join("/tmp", ".keras", "datasets", "fashion-mnist"),
        "/usr/share/datasets/fashion-mnist",
    ]


def _download():
    """The network fallback (tests monkeypatch this)."""
    import keras

    return keras.datasets.fashion_mnist.load_data()


def _not_found_message(searched, download_error=None):
    names = ", ".join(f"{base}.gz" for _, base in _FILES)
    lines = [
        "Fashion-MNIST was not found. Looked for the IDX files "
        f"({names}) in: " + ", ".join(searched) + "."
    ]
    if download_error is not None:
        lines.append(
            "The Keras download failed too: "
            f"{type(download_error).__name__}: {download_error}"
        )
    lines.append(
        "To get the data, either: install Debian's package "
        "(`apt-get install dataset-fashion-mnist`, which puts the files in "
        "/usr/share/datasets/fashion-mnist/); allow network access so "
        "`keras.datasets.fashion_mnist.load_data()` can download it; or "
        "download the four files yourself and pass their directory as "
        "`load_fashion_mnist(path=...)`."
    )
    return "\n".join(lines)


def _find_file(directory, base):
    for name in (base + ".gz", base):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _load_from_dir(directory):
    """The four arrays from `directory`, or `None` when it has no files."""
    found = {key: _find_file(directory, base) for key, base in _FILES}
    if not any(found.values()):
        return None
    missing = [base for key, base in _FILES if found[key] is None]
    if missing:
        # A partial copy (e.g. an interrupted download) is an error rather
        # than a reason to look elsewhere: the user should fix it.
        raise FileNotFoundError(
            f"Fashion-MNIST in {directory} is incomplete: missing "
            f"{', '.join(missing)} (gzipped or not). Re-download the "
            "missing files or delete the directory."
        )
    x_train = _read_idx(found["x_train"], _IMAGES_MAGIC)
    y_train = _read_idx(found["y_train"], _LABELS_MAGIC)
    x_test = _read_idx(found["x_test"], _IMAGES_MAGIC)
    y_test = _read_idx(found["y_test"], _LABELS_MAGIC)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if len(x) != len(y):
            raise ValueError(
                f"Fashion-MNIST {split} files in {directory} disagree: "
                f"{len(x)} images but {len(y)} labels. Re-download them."
            )
    return (x_train, y_train), (x_test, y_test)


def _read_idx(filename, magic):
    """Parses an IDX file, checking its header against its length."""
    opener = gzip.open if filename.endswith(".gz") else open
    try:
        with opener(filename, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # BadGzipFile is an OSError.
        raise ValueError(
            f"Could not read {filename}: {error}. The file is corrupt; "
            "re-download it."
        ) from error
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise ValueError(
            f"{filename} is not an IDX file of {ndim}-D unsigned bytes "
            f"(expected magic number {magic}). Check the file name/content."
        )
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(
            f"{filename} is truncated or corrupt: its header announces shape "
            f"{shape} ({int(np.prod(shape))} bytes) but it holds "
            f"{len(data) - header} bytes. Re-download it."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)
