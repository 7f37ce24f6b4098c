"""Tests for the CIFAR model zoo in `keras_edu.models`."""

import functools
import hashlib
import inspect
import json
import math

import keras
import numpy as np
import pytest

import keras_edu.models as models

CONTRACT_NAMES = {
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_2",
}

# Parameters at 100 classes on 32x32x3 as published in CRD (Tian et al.,
# 2020) and counted by PyTorch (`sum(p.numel() for p in m.parameters())`,
# i.e. without BatchNorm's running statistics).
PUBLISHED = {
    "resnet20": 0.28e6,
    "resnet56": 0.86e6,
    "resnet110": 1.73e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_2": 2.26e6,
}

# Exact counts of RepDistiller's PyTorch modules for the same setting.
PYTORCH_REFERENCE = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
}

# Channels of stage1_out, stage2_out, stage3_out.
STAGE_CHANNELS = {
    "resnet8x4": (64, 128, 256),
    "resnet32x4": (64, 128, 256),
    "wrn_16_1": (16, 32, 64),
    "wrn_16_2": (32, 64, 128),
    "wrn_40_1": (16, 32, 64),
    "wrn_40_2": (32, 64, 128),
}
THIN_STAGE_CHANNELS = (16, 32, 64)


def trainable_count(model):
    return sum(math.prod(w.shape) for w in model.trainable_weights)


@functools.lru_cache(maxsize=None)
def cifar100_model(name):
    """One shared 100-class 32x32x3 build per architecture (read-only use)."""
    return models.get(name, num_classes=100, input_shape=(32, 32, 3))


def random_images(shape, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, size=(batch,) + tuple(shape)).astype("float32")


def test_names_cover_the_contract_and_are_sorted():
    assert CONTRACT_NAMES <= set(models.names())
    assert models.names() == sorted(models.names())
    for name in models.names():
        assert callable(getattr(models, name))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    model = cifar100_model(name)
    count = trainable_count(model)
    assert count == PYTORCH_REFERENCE[name]
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.02
    # count_params() also holds BN moving mean/variance (non-trainable).
    assert model.count_params() > count


UNPUBLISHED = sorted(set(PYTORCH_REFERENCE) - set(PUBLISHED))


@pytest.mark.parametrize("name", UNPUBLISHED)
def test_parameter_count_matches_pytorch_reference(name):
    assert trainable_count(cifar100_model(name)) == PYTORCH_REFERENCE[name]


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_outputs_are_logits(name, input_shape):
    model = models.get(name, num_classes=10, input_shape=input_shape)
    assert model.layers[-1].name == "logits"
    assert model.get_layer("logits").activation is keras.activations.linear
    out = model.predict(random_images(input_shape, batch=3), verbose=0)
    assert out.shape == (3, 10)
    assert np.all(np.isfinite(out))
    # A softmax would leave every row in [0, 1] summing to one.
    assert not np.allclose(out.sum(axis=-1), 1.0) or np.any(out < 0)


def check_stage_ends(model, name, size):
    ends = models.stage_ends(name)
    assert ends == ["stage1_out", "stage2_out", "stage3_out"]
    assert models.stage_ends(model) == ends

    layer_names = [layer.name for layer in model.layers]
    assert layer_names[1] == "stem_conv"
    positions = [layer_names.index(end) for end in ends]
    assert positions == sorted(positions)
    # Only the head follows the last stage.
    after = layer_names[positions[-1] + 1 :]
    assert after[-1] == "logits"
    assert all(n.startswith("head_") for n in after[:-1])

    # Stage 1 keeps the input size, stages 2 and 3 halve it (rounding up,
    # as PyTorch's stride-2 conv with padding=1 does).
    sizes = [size, math.ceil(size / 2), math.ceil(size / 4)]
    channels = STAGE_CHANNELS.get(name, THIN_STAGE_CHANNELS)
    for end, side, width in zip(ends, sizes, channels):
        shape = tuple(model.get_layer(end).output.shape)
        assert shape == (None, side, side, width), (end, shape)


@pytest.mark.parametrize("name", sorted(PYTORCH_REFERENCE))
def test_stage_ends_at_32x32x3(name):
    check_stage_ends(cifar100_model(name), name, 32)


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "wrn_16_2"])
def test_stage_ends_at_28x28x1(name):
    model = models.get(name, num_classes=10, input_shape=(28, 28, 1))
    check_stage_ends(model, name, 28)
    assert tuple(model.output.shape) == (None, 10)


def test_models_are_flat():
    for name in ("resnet8", "wrn_16_2"):
        model = models.get(name)
        assert not any(isinstance(l, keras.Model) for l in model.layers)


def test_stage_ends_feed_a_feature_extractor():
    model = models.resnet8x4(num_classes=10, input_shape=(28, 28, 1))
    taps = [model.get_layer(n).output for n in models.stage_ends("resnet8x4")]
    features = keras.Model(model.inputs, taps + [model.output])
    outs = features.predict(random_images((28, 28, 1)), verbose=0)
    assert [o.shape for o in outs] == [
        (2, 28, 28, 64),
        (2, 14, 14, 128),
        (2, 7, 7, 256),
        (2, 10),
    ]
    np.testing.assert_allclose(
        outs[-1],
        model.predict(random_images((28, 28, 1)), verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_get_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="resnet20"):
        models.get("resnet2O")
    with pytest.raises(ValueError, match="wrn_40_2"):
        models.get("wrn_402")
    with pytest.raises(ValueError, match="Unknown model name"):
        models.stage_ends("vgg13")


def test_get_normalizes_names_and_passes_arguments():
    model = models.get("WRN-16-1", num_classes=7, input_shape=(28, 28, 1))
    assert model.name == "wrn_16_1"
    assert tuple(model.output.shape) == (None, 7)
    model = models.get("resnet8", name="student")
    assert model.name == "student"


def test_weight_decay_is_half_l2_on_kernels():
    weight_decay = 5e-4
    model = models.resnet8(num_classes=10, weight_decay=weight_decay)
    kernels = [
        l.kernel
        for l in model.layers
        if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(model.losses) == len(kernels)
    expected = weight_decay / 2 * sum(
        float(np.sum(np.square(keras.ops.convert_to_numpy(k)))) for k in kernels
    )
    total = float(keras.ops.convert_to_numpy(keras.ops.sum(model.losses)))
    assert total == pytest.approx(expected, rel=1e-5)
    assert not models.resnet8().losses


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="depth"):
        models.cifar_resnet(21, [16, 16, 32, 64])
    with pytest.raises(ValueError, match="depth"):
        models.cifar_wide_resnet(18, 2)
    with pytest.raises(ValueError, match="weight_decay"):
        models.resnet8(weight_decay=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet8(num_classes=0)


def test_save_load_round_trip(tmp_path):
    model = models.resnet8(
        num_classes=10, input_shape=(28, 28, 1), weight_decay=5e-4
    )
    # Non-trivial weights everywhere, BN moving variance included (> 0).
    rng = np.random.default_rng(1)
    model.set_weights(
        [
            rng.uniform(0.5, 1.5, size=w.shape).astype("float32")
            if "variance" in w.path
            else rng.normal(0.0, 0.1, size=w.shape).astype("float32")
            for w in model.weights
        ]
    )
    x = random_images((28, 28, 1), batch=4)
    expected = model.predict(x, verbose=0)

    path = tmp_path / "resnet8.keras"
    model.save(path)
    restored = keras.saving.load_model(path)

    assert restored.name == model.name
    assert [l.name for l in restored.layers] == [l.name for l in model.layers]
    assert len(restored.losses) == len(model.losses)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's CPU kernels do not support channels_first convs.",
)
def test_channels_first():
    model = models.wrn_16_1(
        num_classes=10, input_shape=(1, 28, 28), data_format="channels_first"
    )
    assert tuple(model.get_layer("stage3_out").output.shape) == (None, 64, 7, 7)
    out = model.predict(random_images((1, 28, 28)), verbose=0)
    assert out.shape == (2, 10)


def _keras_histories(node):
    """The layer names of every `keras_history` in a serialized call."""
    if isinstance(node, dict):
        history = node.get("keras_history")
        found = [history[0]] if history else []
        return found + [n for v in node.values() for n in _keras_histories(v)]
    if isinstance(node, (list, tuple)):
        return [n for v in node for n in _keras_histories(v)]
    return []


def graph_fingerprint(model):
    """A digest of the graph: layers, their types, inputs, output shapes, weights.

    Weights are named and shaped by it, so equal digests load each other's
    weight files; the output shapes pin strides and padding.
    """
    layer_configs = {c["name"]: c for c in model.get_config()["layers"]}
    rows = [
        [
            layer.name,
            type(layer).__name__,
            sorted(set(_keras_histories(layer_configs[layer.name]["inbound_nodes"]))),
            [list(t.shape) for t in keras.tree.flatten(layer.output)],
            [[w.path, list(w.shape)] for w in layer.weights],
        ]
        for layer in model.layers
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# Recorded from the separate resnet.py / wide_resnet.py builders before they
# were merged into one (issue 16), on 100 classes and 32x32x3: count_params()
# (BatchNorm statistics included), number of layers, `graph_fingerprint`.
# The merged builder must build the very same graphs. (The same on the
# three backends.)
RECORDED_GRAPHS = {
    "resnet110": (1744852, 390, "71b1f791d7fd8064"),
    "resnet14": (182228, 54, "2c63bfeffa47ea9e"),
    "resnet20": (279892, 75, "6922283f2a345fcf"),
    "resnet32": (475220, 117, "6e1d0581a2b3e39f"),
    "resnet32x4": (7443780, 119, "46de8356242e320e"),
    "resnet44": (670548, 159, "fdd0097ebe57fabe"),
    "resnet56": (865876, 201, "2d6d864976661e81"),
    "resnet8": (84564, 33, "9acbe0510283f46f"),
    "resnet8x4": (1236292, 35, "4713857d4312f2fa"),
    "wrn_16_1": (181844, 52, "c5475b7edff92b25"),
    "wrn_16_2": (705108, 53, "bb1f34aac2196dca"),
    "wrn_40_1": (572500, 136, "843dfeac267b0e8a"),
    "wrn_40_2": (2260564, 137, "ce0c6282948959bc"),
    "cifar_wide_resnet(10, 2, dropout_rate=0.3)": (304346, 35, "277c460a2c5cf3b3"),
    "cifar_resnet(14, [8, 16, 24, 32])": (64831, 56, "14ae711045279e5b"),
}


@pytest.mark.parametrize("name", sorted(PYTORCH_REFERENCE))
def test_graph_is_the_recorded_one(name):
    model = cifar100_model(name)
    assert (
        model.count_params(),
        len(model.layers),
        graph_fingerprint(model),
    ) == RECORDED_GRAPHS[name]


def test_generic_builders_build_the_recorded_graphs():
    wide = models.cifar_wide_resnet(
        10, 2, num_classes=10, input_shape=(28, 28, 1), dropout_rate=0.3
    )
    assert (wide.count_params(), len(wide.layers), graph_fingerprint(wide)) == (
        RECORDED_GRAPHS["cifar_wide_resnet(10, 2, dropout_rate=0.3)"]
    )
    assert wide.name == "cifar_wide_resnet"
    thin = models.cifar_resnet(14, [8, 16, 24, 32], num_classes=7, name="x")
    assert (thin.count_params(), len(thin.layers), graph_fingerprint(thin)) == (
        RECORDED_GRAPHS["cifar_resnet(14, [8, 16, 24, 32])"]
    )
    assert thin.name == "x"


@pytest.mark.parametrize("name", sorted(PYTORCH_REFERENCE))
def test_named_builders_look_like_functions_of_their_module(name):
    # Generated from a config table, they keep what the `def`s had.
    builder = getattr(models, name)
    family = "wide_resnet" if name.startswith("wrn") else "resnet"
    assert builder.__name__ == builder.__qualname__ == name
    assert builder.__module__ == f"keras_edu.models.{family}"
    assert getattr(getattr(models, family), name) is builder
    assert str(inspect.signature(builder)) == (
        "(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0, "
        f"data_format=None, name='{name}')"
    )
    assert "for CIFAR, RepDistiller's" in builder.__doc__
    assert f"keras_edu.models.{name}(num_classes=10" in builder.__doc__
