"""The Fashion-MNIST subset shipped with keras_edu, and the fallback to it."""

import importlib.resources
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile

import keras
import numpy as np
import pytest

from keras_edu import data
from keras_edu.data import fashion_mnist as fashion_mnist_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes")
FULL_DIR = "/usr/share/datasets/fashion-mnist"
BUNDLED_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The documented draw (keras_edu/data/fashion_mnist_subset/README.md).
TRAIN_PER_CLASS, TEST_PER_CLASS = 2000, 500


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch):
    """No local copy and no network: empty search folders, a failing download."""
    searched = [str(tmp_path / "keras_cache"), str(tmp_path / "debian")]

    def fail():
        raise Exception("URL fetch failure: no network in tests")

    monkeypatch.setattr(fashion_mnist_module, "_search_dirs", lambda: searched)
    monkeypatch.setattr(fashion_mnist_module, "_download", fail)
    return searched


def _assert_is_the_bundled_subset(arrays):
    (x_train, y_train), (x_test, y_test) = arrays
    assert x_train.shape == (10 * TRAIN_PER_CLASS, 28, 28)
    assert x_test.shape == (10 * TEST_PER_CLASS, 28, 28)
    assert y_train.shape == (10 * TRAIN_PER_CLASS,)
    assert y_test.shape == (10 * TEST_PER_CLASS,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [TRAIN_PER_CLASS] * 10
    assert np.bincount(y_test).tolist() == [TEST_PER_CLASS] * 10
    # Real images, not blanks: Fashion-MNIST's mean pixel is about 73.
    assert 60 < x_train.mean() < 85 and 60 < x_test.mean() < 85


def test_falls_back_to_the_bundled_subset_with_one_warning(
    fresh_machine, caplog
):
    with caplog.at_level(logging.INFO, logger="keras_edu"):
        arrays, info = data.load_fashion_mnist(with_info=True)
    _assert_is_the_bundled_subset(arrays)
    assert info["source"] == "bundled"
    assert info["directory"] == fashion_mnist_module.BUNDLED_DIR
    assert (info["train_images"], info["test_images"]) == (20000, 5000)
    assert "bundled" in info["description"]
    records = [r for r in caplog.records if r.name == "keras_edu"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "\n" not in message
    # Which data, how many images, why, and how to get the full set.
    assert "subset bundled with keras_edu" in message
    assert "20,000 training + 5,000 test images" in message
    assert "URL fetch failure" in message and fresh_machine[0] in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "path=" in message


def test_source_bundled_reads_the_subset_only(monkeypatch, caplog):
    def must_not_run():
        raise AssertionError("source='bundled' must not search or download")

    monkeypatch.setattr(fashion_mnist_module, "_search_dirs", must_not_run)
    monkeypatch.setattr(fashion_mnist_module, "_download", must_not_run)
    with caplog.at_level(logging.INFO, logger="keras_edu"):
        arrays = data.load_fashion_mnist(source="bundled")
    _assert_is_the_bundled_subset(arrays)
    assert [r.levelno for r in caplog.records if r.name == "keras_edu"] == [
        logging.INFO
    ]


def test_a_local_copy_comes_before_the_subset(fresh_machine, caplog):
    # The subset's own folder stands in for a full copy in the Keras cache:
    # found by the search, it is reported as local and nothing is logged.
    shutil.copytree(fashion_mnist_module.BUNDLED_DIR, fresh_machine[0])
    with caplog.at_level(logging.INFO, logger="keras_edu"):
        _, info = data.load_fashion_mnist(with_info=True)
    assert info["source"] == "local" and info["directory"] == fresh_machine[0]
    assert fresh_machine[0] in info["description"]
    assert not [r for r in caplog.records if r.name == "keras_edu"]


def test_a_named_missing_path_never_falls_back(fresh_machine, tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError) as error:
        data.load_fashion_mnist(path=missing)
    assert str(missing) in str(error.value)
    assert "apt-get install dataset-fashion-mnist" in str(error.value)


def test_source_full_raises_instead_of_falling_back(fresh_machine):
    with pytest.raises(FileNotFoundError, match="URL fetch failure"):
        data.load_fashion_mnist(source="full")


def test_bad_source_arguments(tmp_path):
    with pytest.raises(ValueError, match="'auto', 'full', 'bundled'"):
        data.load_fashion_mnist(source="subset")
    with pytest.raises(ValueError, match="takes no `path`"):
        data.load_fashion_mnist(path=tmp_path, source="bundled")


def test_a_hanging_download_is_cut_short(fresh_machine, monkeypatch):
    # A server that accepts the connection and never answers, like a
    # firewall that swallows the request: without a bound, urllib waits
    # forever. `_download_within` bounds it, then the subset loads.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []
    threading.Thread(
        target=lambda: accepted.append(server.accept()), daemon=True
    ).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/train-images.gz"
    monkeypatch.setattr(
        fashion_mnist_module, "_download", lambda: urllib.request.urlopen(url)
    )
    monkeypatch.setattr(fashion_mnist_module, "_DOWNLOAD_TIMEOUT_S", 0.5)
    try:
        start = time.monotonic()
        arrays = data.load_fashion_mnist()
        elapsed = time.monotonic() - start
    finally:
        server.close()
        for connection, _ in accepted:
            connection.close()
    _assert_is_the_bundled_subset(arrays)
    assert elapsed < 10, f"the download hung for {elapsed:.1f} s"
    assert socket.getdefaulttimeout() is None  # Restored after the download.


def test_the_files_are_package_data():
    folder = importlib.resources.files("keras_edu.data") / "fashion_mnist_subset"
    for name in (*BUNDLED_FILES, "LICENSE", "README.md"):
        assert (folder / name).is_file(), name
    text = (folder / "LICENSE").read_text()
    assert "Copyright (c) 2017 Zalando SE" in text and "MIT License" in text
    with open(os.path.join(ROOT, "NOTICE")) as f:
        assert "Fashion-MNIST" in f.read()


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(FULL_DIR, BUNDLED_FILES[0])),
    reason=f"the full Fashion-MNIST files are not in {FULL_DIR}",
)
def test_the_subset_is_the_documented_draw(monkeypatch):
    monkeypatch.syspath_prepend(RECIPES)
    import make_bundled_fashion_mnist as draw_script

    assert (draw_script.TRAIN_PER_CLASS, draw_script.TEST_PER_CLASS) == (
        TRAIN_PER_CLASS,
        TEST_PER_CLASS,
    )
    full = data.load_fashion_mnist(path=FULL_DIR)
    subset = draw_script.draw(
        full, draw_script.SEED, TRAIN_PER_CLASS, TEST_PER_CLASS
    )
    assert draw_script.differences(subset, fashion_mnist_module.BUNDLED_DIR) == []


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="builds the same wheel on every backend: runs once, on tensorflow",
)
def test_the_wheel_contains_the_bundled_files(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(os.path.join(ROOT, name), source)
    shutil.copytree(
        os.path.join(ROOT, "keras_edu"),
        source / "keras_edu",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
         "--no-build-isolation", "--quiet", "-w", str(tmp_path / "dist")],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("keras_edu-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        sizes = {i.filename: i.file_size for i in archive.infolist()}
    for name in (*BUNDLED_FILES, "LICENSE", "README.md"):
        path = f"keras_edu/data/fashion_mnist_subset/{name}"
        assert path in sizes, f"{path} is not in the wheel"
        assert sizes[path] == os.path.getsize(
            os.path.join(fashion_mnist_module.BUNDLED_DIR, name)
        )
    assert any(n.endswith(".dist-info/licenses/NOTICE") for n in sizes)
    installed = sum(s for n, s in sizes.items() if n.startswith("keras_edu/"))
    assert installed < 20 * 1024**2, f"the package is {installed:,} bytes"


# ------------------------------------------------------------ the recipes


def test_the_main_job_says_it_runs_on_the_bundled_subset(
    fresh_machine, monkeypatch
):
    monkeypatch.syspath_prepend(RECIPES)
    import fashion_mnist as main_job

    info = main_job.locate_data(None)
    assert info["source"] == "bundled"
    assert info["directory"] == fashion_mnist_module.BUNDLED_DIR
    assert main_job.data_label(info) == "Fashion-MNIST, bundled subset"
    assert main_job.locate_data(str(fresh_machine[0])) is None  # A typo.


class _Terminal:
    def isatty(self):
        return True


def test_recipes_print_one_line_per_epoch_off_a_terminal(monkeypatch):
    monkeypatch.syspath_prepend(RECIPES)
    import io

    import training

    assert training.default_verbose(_Terminal()) == 1  # The progress bar.
    assert training.default_verbose(io.StringIO()) == 2  # `> log.txt`, CI.
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert training.TrainSettings().verbose == 2
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert training.TrainSettings().verbose == 1
    assert training.TrainSettings(verbose=0).verbose == 0  # Explicit wins.
