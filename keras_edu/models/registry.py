"""Look up the model zoo by name."""

import difflib
import re

import keras

from keras_edu.models import resnet
from keras_edu.models import wide_resnet

_BUILDERS = {**resnet.BUILDERS, **wide_resnet.BUILDERS}
# Every architecture of the zoo has three stages (CIFAR layout, strides
# 1, 2, 2) whose last layers are named `stage{k}_out`.
_NUM_STAGES = {arch: 3 for arch in _BUILDERS}
_STAGE_OUT = re.compile(r"stage(\d+)_out")


def names():
    """The sorted names `get` accepts, e.g. `["resnet110", "resnet14", ...]`."""
    return sorted(_BUILDERS)


def _canonical(name):
    """`"WRN-40-2"` -> `"wrn_40_2"`; raises `ValueError` for unknown names."""
    if not isinstance(name, str):
        raise ValueError(
            f"A model name must be a string. Received: {name!r} of type "
            f"{type(name).__name__}."
        )
    key = name.strip().lower().replace("-", "_")
    if key in _BUILDERS:
        return key
    close = difflib.get_close_matches(key, names(), n=3, cutoff=0.6)
    hint = (
        f"Did you mean {' or '.join(repr(c) for c in close)}? "
        if close
        else ""
    )
    raise ValueError(
        f"Unknown model name {name!r}. {hint}Known names: {', '.join(names())}."
    )


def get(name, /, num_classes=100, input_shape=(32, 32, 3), **kwargs):
    """Builds a zoo architecture by name.

    Names are matched case-insensitively, with `-` read as `_`
    (`"WRN-40-2"` builds `wrn_40_2`).

    Args:
        name: str. One of `names()`. Positional-only, so that `name=` in
            `**kwargs` names the model.
        num_classes: int. Size of the logits.
        input_shape: Shape of one image, e.g. `(32, 32, 3)` or `(28, 28, 1)`.
        **kwargs: Passed on to the builder: `weight_decay`, `data_format`,
            `name` (the model's name; defaults to the architecture's).

    Returns:
        A flat functional `keras.Model` that outputs logits.

    Raises:
        ValueError: For an unknown name; the message lists close matches.

    Example:

    ```python
    import keras_edu.models

    teacher = keras_edu.models.get("resnet32x4")
    student = keras_edu.models.get("resnet8x4", weight_decay=5e-4)
    teacher.count_params() > student.count_params()  # True
    ```
    """
    builder = _BUILDERS[_canonical(name)]
    return builder(num_classes=num_classes, input_shape=input_shape, **kwargs)


def stage_ends(name):
    """The names of the layers that end each stage of the main body, in order.

    Stage 1 includes the stem; the head (`head_*` layers and `logits`) comes
    after the last of these layers. For every architecture of the zoo this is
    `["stage1_out", "stage2_out", "stage3_out"]`: for the post-activation
    ResNets the layers are the blocks' final ReLUs, for the pre-activation
    WRNs the residual sums (before the head's BN + ReLU).

    Args:
        name: A zoo name (see `names()`), or a `keras.Model` built by this
            package, whose `stage{k}_out` layers are then listed.

    Returns:
        A list of layer names.

    Example:

    ```python
    import keras
    import keras_edu.models

    model = keras_edu.models.resnet20()
    ends = keras_edu.models.stage_ends("resnet20")
    taps = [model.get_layer(n).output for n in ends]
    features = keras.Model(model.inputs, taps)  # 32x32, 16x16, 8x8 maps
    ```
    """
    if isinstance(name, keras.Model):
        found = sorted(
            (int(m.group(1)), layer.name)
            for layer in name.layers
            if (m := _STAGE_OUT.fullmatch(layer.name))
        )
        if not found:
            raise ValueError(
                f"Model {name.name!r} has no layer named `stage{{k}}_out`; "
                "was it built by `keras_edu.models`?"
            )
        return [layer_name for _, layer_name in found]
    arch = _canonical(name)
    return [f"stage{k}_out" for k in range(1, _NUM_STAGES[arch] + 1)]
