"""Fashion-MNIST: local IDX files, then the network, then a bundled subset."""

import gzip
import logging
import os
import socket

import numpy as np

logger = logging.getLogger("keras_edu")

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

# The class-balanced subset shipped as package data, in the same four-file
# layout (recipes/make_bundled_fashion_mnist.py draws it from the full set).
BUNDLED_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "fashion_mnist_subset"
)
_SOURCES = ("auto", "full", "bundled")
# Bound on each network operation of the Keras download (connect, read).
_DOWNLOAD_TIMEOUT_S = 30


def load_fashion_mnist(path=None, source="auto", with_info=False):
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
    4. `keras.datasets.fashion_mnist.load_data()`, which downloads (each
       network operation waits at most 30 seconds, so an offline machine
       does not hang).
    5. The subset bundled with keras_edu (`source="auto"` only): 20,000
       training and 5,000 test images, 2,000 and 500 per class, drawn
       seeded from the full files (`BUNDLED_DIR/README.md` says how). One
       warning on the `keras_edu` logger says so and how to get the full
       set.

    Args:
        path: Optional directory holding the four IDX files.
        source: `"auto"` (default): steps 1-5. `"full"`: steps 1-4 only,
            raising when the full data set is nowhere (for work that needs
            all 70,000 images). `"bundled"`: the bundled subset only, with
            no search and no download (`path` must be `None`).
        with_info: Also return a dict that says which data was loaded:
            `source` (`"path"`, `"local"`, `"download"` or `"bundled"`),
            `directory` (the folder read, `None` after a download),
            `train_images`, `test_images` and a one-line `description`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: uint8 images of shape
        `(N, 28, 28)` and uint8 labels in `[0, 10)` of shape `(N,)`, the
        same arrays as `keras.datasets.fashion_mnist.load_data()` (60,000
        and 10,000 images; 20,000 and 5,000 for the bundled subset). Class
        names are in `FASHION_MNIST_CLASS_NAMES`. With `with_info=True`,
        `(arrays, info)`.

    Raises:
        FileNotFoundError: `path` has no files; or, with `source="full"`
            (or a broken install without the bundled files), no copy was
            found and the download failed. The message says how to get
            the data.
        ValueError: A file was found but is truncated or not an IDX file;
            or `source` is unknown, or given with a `path`.

    Example:

    ```python
    import numpy as np
    from keras_edu.data import load_fashion_mnist, from_arrays
    from keras_edu.data import FASHION_MNIST_CLASS_NAMES

    # The full set where it is on disk or downloadable, else the subset.
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    train = from_arrays(x_train, y_train, class_names=FASHION_MNIST_CLASS_NAMES)

    # The bundled subset, on any machine.
    (x_train, y_train), _ = load_fashion_mnist(source="bundled")
    x_train.shape  # (20000, 28, 28)
    np.bincount(y_train)  # 2,000 per class
    ```
    """
    if source not in _SOURCES:
        raise ValueError(
            f"`source` must be one of {', '.join(map(repr, _SOURCES))}. "
            f"Received: source={source!r}."
        )
    if source == "bundled":
        if path is not None:
            raise ValueError(
                "`source='bundled'` reads the subset shipped with keras_edu "
                f"and takes no `path`. Received: path={path!r}. Pass "
                "`path` alone to read your own copy."
            )
        arrays, info = _load_bundled(), _info("bundled", BUNDLED_DIR)
        logger.info("Loaded %s.", _describe(info, arrays))
        return _result(arrays, info, with_info)
    if path is not None:
        arrays = _load_from_dir(os.fspath(path))
        if arrays is None:
            raise FileNotFoundError(_not_found_message([os.fspath(path)]))
        return _result(arrays, _info("path", os.fspath(path)), with_info)
    searched = _search_dirs()
    for directory in searched:
        arrays = _load_from_dir(directory)
        if arrays is not None:
            return _result(arrays, _info("local", directory), with_info)
    try:
        arrays = _download_within(_DOWNLOAD_TIMEOUT_S)
    except Exception as error:  # Keras raises a bare Exception on URL errors.
        download_error = error
    else:
        return _result(arrays, _info("download", None), with_info)
    message = _not_found_message(searched, download_error=download_error)
    if source == "full":
        raise FileNotFoundError(message) from download_error
    try:
        arrays = _load_bundled()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{message}\n{error}") from download_error
    info = _info("bundled", BUNDLED_DIR)
    logger.warning(
        "Fashion-MNIST: the full data set was not found (searched %s; the "
        "download failed: %s), so this is %s. To use the full set, "
        "either: %s",
        ", ".join(searched),
        _first_line(download_error),
        _describe(info, arrays),
        _WAYS_TO_GET_IT,
    )
    return _result(arrays, info, with_info)


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


def _download_within(timeout):
    """`_download()`, each socket operation bounded by `timeout` seconds.

    Keras downloads with `urllib` and no timeout, so behind a firewall that
    drops packets a connection would wait for the system's TCP timeout
    (minutes) before the bundled subset is used. The bound is the default
    socket timeout for the duration of the download only; a default the
    caller has set is kept.
    """
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(timeout)
    try:
        return _download()
    finally:
        socket.setdefaulttimeout(previous)


def _load_bundled():
    arrays = _load_from_dir(BUNDLED_DIR)
    if arrays is None:
        raise FileNotFoundError(
            f"The Fashion-MNIST subset bundled with keras_edu is missing "
            f"from {BUNDLED_DIR}: the installation is incomplete. Reinstall "
            "keras-edu (`pip install --force-reinstall keras-edu`)."
        )
    return arrays


def _info(source, directory):
    return {"source": source, "directory": directory}


def _result(arrays, info, with_info):
    if not with_info:
        return arrays
    (x_train, _), (x_test, _) = arrays
    info = dict(
        info,
        train_images=len(x_train),
        test_images=len(x_test),
        description=_describe(info, arrays),
    )
    return arrays, info


def _describe(info, arrays):
    """One line that says which data `arrays` are, e.g. for a table title."""
    (x_train, _), (x_test, _) = arrays
    counts = f"{len(x_train):,} training + {len(x_test):,} test images"
    if info["source"] == "bundled":
        return (
            f"the Fashion-MNIST subset bundled with keras_edu ({counts}, "
            "class-balanced; the full set has 60,000 + 10,000)"
        )
    if info["source"] == "download":
        return f"Fashion-MNIST downloaded by Keras ({counts})"
    return f"Fashion-MNIST from {info['directory']} ({counts})"


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# How to get the full data set, for the error and the fallback's warning.
_WAYS_TO_GET_IT = (
    "install Debian's package "
    "(`apt-get install dataset-fashion-mnist`, which puts the files in "
    "/usr/share/datasets/fashion-mnist/); allow network access so "
    "`keras.datasets.fashion_mnist.load_data()` can download it; or "
    "download the four files yourself and pass their directory as "
    "`load_fashion_mnist(path=...)`."
)


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
    lines.append("To get the data, either: " + _WAYS_TO_GET_IT)
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
