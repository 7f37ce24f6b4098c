"""Tests for keras_edu.data: sources, groups and pipelines (offline, fast)."""

import gzip
import os

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")

from keras_edu import data  # noqa: E402
from keras_edu.data import fashion_mnist as fashion_mnist_module  # noqa: E402


# ---------------------------------------------------------------- helpers


def _write_idx(filename, array, gz=True):
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if gz else open
    with opener(filename + (".gz" if gz else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(directory, seed=0, gz=True):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (5,)),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (3,)),
    }
    os.makedirs(directory, exist_ok=True)
    for name, array in arrays.items():
        _write_idx(os.path.join(str(directory), name), array, gz=gz)
    return arrays


def _image_folder(root, classes=3, per_class=4, size=(20, 24)):
    """Class `c`'s images are a flat colour 60 * c, so labels are checkable."""
    for c in range(classes):
        os.makedirs(root / f"class_{c}")
        for i in range(per_class):
            pixels = np.full((*size, 3), 60 * c, np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.jpg")
    return root


def _arrays(n=24, classes=6, shape=(8, 8)):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = np.arange(n) % classes
    return x, y


def _no_network(monkeypatch, search_dirs):
    def fail():
        raise Exception("URL fetch failure: no network in tests")

    monkeypatch.setattr(
        fashion_mnist_module, "_search_dirs", lambda: search_dirs
    )
    monkeypatch.setattr(fashion_mnist_module, "_download", fail)


# ---------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_path(tmp_path, gz):
    arrays = _fake_fashion_mnist(tmp_path, gz=gz)
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist(
        path=tmp_path
    )
    assert x_train.dtype == np.uint8 and x_train.shape == (5, 28, 28)
    assert x_test.shape == (3, 28, 28) and y_test.shape == (3,)
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])


def test_load_fashion_mnist_search_order(tmp_path, monkeypatch):
    keras_cache, debian = tmp_path / "keras", tmp_path / "debian"
    from_debian = _fake_fashion_mnist(debian, seed=2)
    _no_network(monkeypatch, [str(keras_cache), str(debian)])
    # Only the Debian copy exists: it is used, nothing is downloaded.
    (x_train, _), _ = data.load_fashion_mnist()
    np.testing.assert_array_equal(
        x_train, from_debian["train-images-idx3-ubyte"]
    )
    expected = _fake_fashion_mnist(keras_cache, seed=1)
    (x_train, _), _ = data.load_fashion_mnist()  # The Keras cache comes first.
    np.testing.assert_array_equal(x_train, expected["train-images-idx3-ubyte"])


def test_load_fashion_mnist_missing_path_says_how_to_get_it(
    tmp_path, monkeypatch
):
    _no_network(monkeypatch, [str(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist(path=tmp_path / "missing")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "path=" in message and "missing" in message


def test_load_fashion_mnist_nothing_found_says_how_to_get_it(
    tmp_path, monkeypatch
):
    _no_network(monkeypatch, [str(tmp_path / "a"), str(tmp_path / "b")])
    # `source="full"`: the default falls back to the bundled subset instead
    # (tests/test_bundled_data.py).
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist(source="full")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "network" in message and "URL fetch failure" in message
    assert str(tmp_path / "a") in message and str(tmp_path / "b") in message


def test_load_fashion_mnist_corrupt_and_partial_files(tmp_path):
    _fake_fashion_mnist(tmp_path)
    name = tmp_path / "train-images-idx3-ubyte.gz"
    content = gzip.decompress(name.read_bytes())
    name.write_bytes(gzip.compress(content[:-10]))
    with pytest.raises(
        ValueError, match="train-images-idx3-ubyte.gz is truncated"
    ):
        data.load_fashion_mnist(path=tmp_path)
    os.remove(name)
    with pytest.raises(
        FileNotFoundError, match="incomplete: missing train-images"
    ):
        data.load_fashion_mnist(path=tmp_path)


# ------------------------------------------------------------ from_arrays


def test_from_arrays_shapes_dtypes_and_names():
    x, y = _arrays(n=6, classes=3)
    source = data.from_arrays(x, y.reshape(-1, 1), class_names=["a", "b", "c"])
    assert source.num_classes == 3 and source.class_names == ("a", "b", "c")
    assert source.image_shape == (8, 8, 1) and source.size == 6
    image, label = next(iter(source.dataset))
    assert image.dtype == tf.uint8 and image.shape == (8, 8, 1)
    assert label.dtype == tf.int32
    np.testing.assert_array_equal(image.numpy()[..., 0], x[0])
    np.testing.assert_array_equal(source.labels, y)


def test_from_arrays_rejects_bad_inputs():
    x, y = _arrays(n=4, classes=2)
    with pytest.raises(ValueError, match="already scaled to"):
        data.from_arrays(x / 255.0, y)
    with pytest.raises(ValueError, match="only 2 classes"):
        data.from_arrays(x, y + 1, num_classes=2)
    with pytest.raises(ValueError, match="must have shape"):
        data.from_arrays(x, y[:3])
    source = data.from_arrays(x.astype("float32"), y)  # [0, 255] floats: fine.
    assert source.dataset.element_spec[0].dtype == tf.uint8


# -------------------------------------------------------------- from_tfds


def test_from_tfds_mock_cifar10():
    with tfds.testing.mock_data(num_examples=5):
        source = data.from_tfds("cifar10", "train")
        examples = list(source.dataset)
    assert source.num_classes == 10 and len(source.class_names) == 10
    assert source.image_shape == (32, 32, 3) and source.size == 5
    assert len(examples) == 5
    image, label = examples[0]
    assert image.dtype == tf.uint8 and image.shape == (32, 32, 3)
    assert label.dtype == tf.int32 and 0 <= int(label) < 10


def test_from_tfds_mock_fashion_mnist_pipeline():
    with tfds.testing.mock_data(num_examples=6):
        source = data.from_tfds("fashion_mnist", "test")
        batches = data.make_pipeline(
            source, batch_size=4, training=True, augment="cifar", seed=0
        )
        images, labels = next(iter(batches))
    assert source.class_names == data.FASHION_MNIST_CLASS_NAMES
    assert images.shape == (4, 28, 28, 1) and images.dtype == tf.float32
    assert labels.dtype == tf.int32


def test_from_tfds_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean.*cifar100"):
        data.from_tfds("cifar1000", "train")


# --------------------------------------------------------- from_directory


def test_from_directory_labels_and_shapes(tmp_path):
    root = _image_folder(tmp_path / "images")
    source = data.from_directory(root, image_size=(16, 16), seed=0)
    assert source.class_names == ("class_0", "class_1", "class_2")
    assert source.num_classes == 3 and source.size == 12
    assert source.image_shape == (16, 16, 3)
    seen = []
    for image, label in source.dataset:
        assert image.dtype == tf.uint8 and image.shape == (16, 16, 3)
        # Flat colour 60 * class survives JPEG and resizing (within a few).
        assert (
            abs(
                float(tf.reduce_mean(tf.cast(image, "float32")))
                - 60 * int(label)
            )
            < 4
        )
        seen.append(int(label))
    assert sorted(seen) == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(seen, source.labels)


def test_from_directory_grayscale_and_class_names(tmp_path):
    root = _image_folder(tmp_path / "images")
    source = data.from_directory(
        root, 12, color_mode="grayscale", class_names=["class_2", "class_0"]
    )
    assert source.image_shape == (12, 12, 1) and source.size == 8
    for image, label in source.dataset:
        expected = 120 if int(label) == 0 else 0  # class_2 is label 0 now.
        assert (
            abs(float(tf.reduce_mean(tf.cast(image, "float32"))) - expected) < 4
        )


def test_from_directory_corrupt_image_is_named(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / "class_1" / "broken.jpg").write_bytes(
        b"\xff\xd8\xff\xe0 not a jpeg"
    )
    good = (root / "class_0" / "0.jpg").read_bytes()
    (root / "class_2" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError) as info:
        data.from_directory(root, image_size=(16, 16))
    message = str(info.value)
    assert "2 of 14 image file(s) cannot be decoded" in message
    assert str(root / "class_1" / "broken.jpg") in message
    assert str(root / "class_2" / "truncated.jpg") in message
    # Without validation the error only surfaces when the pipeline runs.
    source = data.from_directory(root, image_size=(16, 16), validate=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(source.dataset)


def test_from_directory_without_class_folders(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(
        ValueError, match="no class sub-folders.*1 images directly"
    ):
        data.from_directory(tmp_path, image_size=(8, 8))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="Found no images"):
        data.from_directory(tmp_path, image_size=(8, 8))
    with pytest.raises(ValueError, match="image_size"):
        data.from_directory(tmp_path, image_size=(8, 0))


# -------------------------------------------------------- split_by_groups


def test_split_by_groups_arrays_exact():
    x, y = _arrays(n=12, classes=6)
    groups = [[0, 1], [5, 2, 3], [1, 4]]  # Overlap is allowed.
    splits = data.split_by_groups((x, y), groups)
    for group, (xg, yg) in zip(groups, splits):
        keep = np.isin(y, group)
        np.testing.assert_array_equal(xg, x[keep])
        np.testing.assert_array_equal(yg, [group.index(c) for c in y[keep]])
    ((xg, yg),) = data.split_by_groups((x, y), [[5, 2]], local_labels=False)
    np.testing.assert_array_equal(yg, y[np.isin(y, [5, 2])])


@pytest.mark.parametrize("as_source", [True, False])
def test_split_by_groups_datasets_match_arrays(as_source):
    x, y = _arrays(n=18, classes=6)
    source = data.from_arrays(x, y, class_names=list("abcdef"))
    groups = [[4, 0], [1, 2, 3]]
    inputs = source if as_source else source.dataset
    splits = data.split_by_groups(inputs, groups)
    for group, (xg, yg), split in zip(
        groups, data.split_by_groups((x, y), groups), splits
    ):
        dataset = split.dataset if as_source else split
        images, labels = zip(
            *[(image.numpy()[..., 0], int(label)) for image, label in dataset]
        )
        np.testing.assert_array_equal(images, xg)
        np.testing.assert_array_equal(labels, yg)
        if as_source:
            assert split.num_classes == len(group) and split.size == len(yg)
            assert split.class_names == tuple("abcdef"[c] for c in group)
            assert int(split.dataset.cardinality()) == len(yg)
            np.testing.assert_array_equal(split.labels, yg)


def test_split_by_groups_rejects_bad_groups():
    x, y = _arrays(n=6, classes=3)
    source = data.from_arrays(x, y)
    with pytest.raises(ValueError, match="source has 3 classes"):
        data.split_by_groups(source, [[0, 3]])
    with pytest.raises(ValueError, match="class twice"):
        data.split_by_groups((x, y), [[1, 1]])
    with pytest.raises(ValueError, match="non-empty lists"):
        data.split_by_groups((x, y), [[0], []])
    with pytest.raises(ValueError, match="non-empty lists"):
        data.split_by_groups((x, y), [0, 1])


# ----------------------------------------------------------- make_pipeline


def _padded_crops(image, padding=4):
    """Every (crop, flipped crop) of `image` zero-padded by `padding`."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crops = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[top : top + h, left : left + w]
            crops += [crop, crop[:, ::-1]]
    return crops


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3)])
def test_cifar_augment_keeps_shape_dtype_and_is_a_padded_crop(shape):
    x, y = _arrays(n=8, classes=4, shape=shape)
    batches = data.make_pipeline(
        data.from_arrays(x, y),
        batch_size=8,
        training=True,
        augment="cifar",
        normalize=False,
        seed=3,
    )
    images, labels = next(iter(batches))
    channels = shape[2] if len(shape) == 3 else 1
    assert (
        images.shape == (8, *shape[:2], channels) and images.dtype == tf.float32
    )
    originals = x.reshape(8, *shape[:2], channels)
    for image, label in zip(images.numpy(), labels.numpy()):
        # Shuffled: find the source among the examples with this label.
        candidates = originals[y == label]
        assert any(
            np.array_equal(image, crop)
            for original in candidates
            for crop in _padded_crops(original)
        )


def test_pipeline_is_reproducible_with_seed_and_reshuffles_per_epoch():
    x, y = _arrays(n=32, classes=4)

    def epochs(seed):
        batches = data.make_pipeline(
            data.from_arrays(x, y),
            32,
            training=True,
            augment="cifar",
            seed=seed,
        )
        return [next(iter(batches))[0].numpy() for _ in range(2)]

    first, second = epochs(7), epochs(7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])


def test_evaluation_pipeline_keeps_order_and_pixels():
    x, y = _arrays(n=10, classes=5)
    batches = data.make_pipeline(
        data.from_arrays(x, y), batch_size=4, training=False, augment="cifar"
    )
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    np.testing.assert_allclose(images[..., 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, y)


def test_normalize_values():
    x = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 51, 255)])
    y = np.zeros(3, np.int64)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)

    def first_batch(normalize):
        batches = data.make_pipeline(
            data.from_arrays(x, y), 3, training=False, normalize=normalize
        )
        return next(iter(batches))[0].numpy()

    pixels = np.array([0.0, 51.0, 255.0]).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(
        first_batch(False), np.broadcast_to(pixels, (3, 2, 2, 3))
    )
    np.testing.assert_allclose(
        first_batch(True)[:, 0, 0, 0], [0.0, 0.2, 1.0], rtol=1e-6
    )
    expected = (pixels / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(
        first_batch((mean, std)),
        np.broadcast_to(expected, (3, 2, 2, 3)),
        rtol=1e-5,
    )
    imagenet = first_batch("imagenet")[2, 0, 0]
    np.testing.assert_allclose(
        imagenet,
        (1.0 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="one value per channel"):
        first_batch(((0.5, 0.5), (1.0, 1.0)))
    with pytest.raises(ValueError, match="Unknown `normalize` preset"):
        first_batch("cifar")


def test_resize_crop_outputs_image_shape():
    x, y = _arrays(n=4, classes=2, shape=(40, 30, 3))
    for training in (True, False):
        batches = data.make_pipeline(
            data.from_arrays(x, y),
            4,
            training=training,
            augment="resize_crop",
            image_shape=(24, 24, 3),
            seed=0,
        )
        images, _ = next(iter(batches))
        assert images.shape == (4, 24, 24, 3) and images.dtype == tf.float32
        assert (
            0.0
            <= float(tf.reduce_min(images))
            <= float(tf.reduce_max(images))
            <= 1.0
        )


def test_resize_crop_batches_images_of_varying_sizes():
    sizes = [(30, 50), (45, 33), (24, 24), (60, 40), (35, 35)]

    def examples():
        for i, size in enumerate(sizes):
            yield np.full((*size, 3), 10 * i, np.uint8), i

    dataset = tf.data.Dataset.from_generator(
        examples,
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.uint8),
            tf.TensorSpec((), tf.int64),
        ),
    )
    batches = data.make_pipeline(
        dataset,
        5,
        training=False,
        augment="resize_crop",
        image_shape=(24, 24, 3),
        normalize=False,
    )
    images, labels = next(iter(batches))
    assert images.shape == (5, 24, 24, 3) and labels.dtype == tf.int32
    # Flat images stay flat: resizing and cropping moved no wrong pixels in.
    np.testing.assert_allclose(
        images.numpy(),
        10.0 * np.arange(5).reshape(5, 1, 1, 1) * np.ones((5, 24, 24, 3)),
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="needs an output size"):
        data.make_pipeline(dataset, 5, training=True, augment="resize_crop")


def test_callable_augment_runs_in_training_only():
    x, y = _arrays(n=4, classes=2)
    source = data.from_arrays(x, y)

    def invert(image):
        return 255 - image

    train = data.make_pipeline(
        source, 4, training=True, augment=invert, normalize=False, seed=0
    )
    evaluation = data.make_pipeline(
        source, 4, training=False, augment=invert, normalize=False
    )
    images, labels = next(iter(train))
    for image, label in zip(images.numpy(), labels.numpy()):
        assert any(
            np.array_equal(image[..., 0], 255 - o) for o in x[y == label]
        )
    np.testing.assert_array_equal(next(iter(evaluation))[0].numpy()[..., 0], x)


def test_pipeline_shape_errors_name_both_shapes_and_the_fix():
    x, y = _arrays(n=4, classes=2, shape=(28, 28))
    source = data.from_arrays(x, y)
    with pytest.raises(ValueError) as info:
        data.make_pipeline(source, 2, training=True, image_shape=(32, 32, 3))
    message = str(info.value)
    assert "(28, 28, 1)" in message and "(32, 32, 3)" in message
    assert "Fix:" in message
    with pytest.raises(ValueError, match="channels"):
        data.make_pipeline(
            source,
            2,
            training=True,
            augment="resize_crop",
            image_shape=(16, 16, 3),
        )
    with pytest.raises(ValueError, match="already batched"):
        data.make_pipeline(source.dataset.batch(2), 2, training=True)
    with pytest.raises(ValueError, match="augment"):
        data.make_pipeline(source, 2, training=True, augment="mixup")
    with pytest.raises(ValueError, match="batch_size"):
        data.make_pipeline(source, 0, training=True)


def test_pipeline_trains_a_model_on_the_current_backend():
    x, y = _arrays(n=16, classes=4, shape=(8, 8))
    batches = data.make_pipeline(
        data.from_arrays(x, y),
        batch_size=8,
        training=True,
        augment="cifar",
        image_shape=(8, 8, 1),
        seed=0,
    )
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = model.fit(batches, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
