"""How the new layers of a grade start: the initialisations of a grade switch.

At a grade boundary the student gains a stage and a new teaching-reference
block (or the real head). The method (METHOD.md section 1) leaves them as
freshly initialised. The functions here are the alternatives the
`GradeCallback` offers: residual blocks that start as their shortcut, and
a classifier that starts from the old one's rows for the classes already
seen, and BatchNorm statistics re-estimated on the new grade's data.
"""

import keras
from keras import ops

from keras_edu import _keras_internals

__all__ = [
    "copy_seen_class_rows",
    "reestimate_batchnorm_statistics",
    "zero_init_residual_branches",
]


def zero_init_residual_branches(layer):
    """Zeroes the last BatchNorm scale of every residual branch in `layer`.

    A residual block `out = relu(bn2(conv2(...)) + shortcut)` whose `bn2`
    has `gamma = 0` computes `relu(shortcut)`: it starts as its shortcut
    path, as in "zero-init residual" training (Goyal et al., 2017) and in
    function-preserving growth (Net2Net, progressive stacking). An
    identity-shortcut block then passes its (post-ReLU) input through
    unchanged, so a freshly added stage starts close to a projection of the
    old features instead of random ones.

    The residual branch of an `Add` layer with two inputs is the longer of
    its two input paths (counted back, layer by layer, to where they fork);
    its gamma is zeroed when that path ends in a `BatchNormalization` with a
    scale. Other layers are left alone.

    Args:
        layer: A functional `keras.Model` (or a layer containing one, such
            as a `GradedStudent` stage cut from a functional model).

    Returns:
        The names of the BatchNormalization layers whose gamma was zeroed.

    Example:

    ```python
    import keras_edu

    model = keras_edu.models.resnet8(num_classes=10, input_shape=(28, 28, 1))
    zeroed = keras_edu.growth.zero_init_residual_branches(model)
    zeroed  # ['stage1_block1_bn2', 'stage2_block1_bn2', 'stage3_block1_bn2']
    ```
    """
    zeroed = []
    for add in _add_layers(layer):
        inputs = add.input
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            continue
        branch = _residual_branch_end(*inputs)
        if isinstance(branch, keras.layers.BatchNormalization) and branch.scale:
            branch.gamma.assign(ops.zeros(branch.gamma.shape, branch.gamma.dtype))
            zeroed.append(branch.name)
    return zeroed


def _add_layers(layer):
    for sublayer in getattr(layer, "layers", []):
        if isinstance(sublayer, keras.layers.Add):
            yield sublayer
        yield from _add_layers(sublayer)


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def _chain_back(tensor):
    """`tensor`, its input, that one's input, ... through one-input layers."""
    chain = [tensor]
    while True:
        operation = _producer(tensor)
        nodes = getattr(operation, "_inbound_nodes", None)
        if not nodes or len(nodes[0].input_tensors) != 1:
            return chain
        tensor = nodes[0].input_tensors[0]
        chain.append(tensor)


def _residual_branch_end(a, b):
    """The layer that ends the longer of two paths into an `Add`, or None.

    Both paths are walked back to the first tensor they share (where the
    block forks); the residual branch is the one with more layers.
    """
    chain_a, chain_b = _chain_back(a), _chain_back(b)
    ids_b = [id(t) for t in chain_b]
    fork = next(((i, ids_b.index(id(t))) for i, t in enumerate(chain_a) if id(t) in ids_b), None)
    if fork is None or fork[0] == fork[1]:
        return None
    return _producer(a if fork[0] > fork[1] else b)


def _final_dense(block):
    """The classifier (last `Dense`) of a head or teaching-reference block."""
    if isinstance(block, keras.layers.Dense):
        return block
    if hasattr(block, "dense"):
        return block.dense
    dense = [l for l in getattr(block, "layers", []) if isinstance(l, keras.layers.Dense)]
    return dense[-1] if dense else None


def copy_seen_class_rows(old_block, new_block, old_classes, new_classes):
    """Initialise the new classifier's seen-class rows from the old one.

    The new block's classifier gets the old block's weights (kernel column
    and bias) for every class the old block predicted, when both
    classifiers take inputs of the same width; the columns of the new
    classes keep their initialisation.

    Args:
        old_block: The previous grade's block (teaching-reference or head).
        new_block: The new grade's block.
        old_classes: Global class ids of the old block's logits, in order.
        new_classes: Global class ids of the new block's logits, in order.

    Returns:
        True when the rows were copied, False when the shapes do not allow it.

    Example:

    ```python
    import numpy as np
    import keras_edu

    old = keras_edu.layers.TeachingReference(num_classes=2, width=8)
    new = keras_edu.layers.TeachingReference(num_classes=4, width=8)
    old.build((None, 4, 4, 8)); new.build((None, 2, 2, 16))
    keras_edu.growth.copy_seen_class_rows(old, new, [0, 1], [0, 1, 2, 3])  # True
    np.allclose(new.dense.kernel.numpy()[:, :2], old.dense.kernel.numpy())  # True
    ```
    """
    old_dense, new_dense = _final_dense(old_block), _final_dense(new_block)
    if old_dense is None or new_dense is None:
        return False
    old_kernel = ops.convert_to_numpy(old_dense.kernel)
    new_kernel = ops.convert_to_numpy(new_dense.kernel)
    if old_kernel.shape[0] != new_kernel.shape[0]:
        return False
    new_position = {c: i for i, c in enumerate(new_classes)}
    targets = [new_position[c] for c in old_classes]
    new_kernel[:, targets] = old_kernel
    new_dense.kernel.assign(new_kernel)
    if old_dense.use_bias and new_dense.use_bias:
        new_bias = ops.convert_to_numpy(new_dense.bias)
        new_bias[targets] = ops.convert_to_numpy(old_dense.bias)
        new_dense.bias.assign(new_bias)
    return True


def reestimate_batchnorm_statistics(model, batches):
    """Sets every BatchNorm's moving statistics to their average over `batches`.

    After a grade switch the new stage's BatchNorm layers hold their
    initial statistics (mean 0, variance 1) and the surviving ones hold
    statistics of the previous grade's classes, so the model evaluated in
    inference mode right after the switch mispredicts until training has
    moved the averages. This runs `model` forward in training mode on each
    batch with the momentum of batch `k` (0-based) set to `k / (k + 1)`,
    which makes each moving mean and variance the plain average of the
    batches' means and variances. No trainable weight changes; the layers'
    momenta are restored afterwards.

    Args:
        model: A Keras model or layer containing `BatchNormalization` layers.
        batches: Iterable of input batches (arrays, or `(x, y)` tuples whose
            `x` is used).

    Returns:
        The number of BatchNorm layers re-estimated.

    Example:

    ```python
    import keras, numpy as np
    import keras_edu

    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    batches = [np.full((4, 3), 1.0), np.full((4, 3), 3.0)]
    keras_edu.growth.reestimate_batchnorm_statistics(model, batches)  # 1
    model.layers[0].moving_mean.numpy()  # [2., 2., 2.]
    ```
    """
    layers = [
        layer
        for layer in _keras_internals.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for k, batch in enumerate(batches):
            x = batch[0] if isinstance(batch, tuple) else batch
            for layer in layers:
                layer.momentum = k / (k + 1.0)
            model(x, training=True)
            seen += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if seen == 0:
        raise ValueError(
            "`batches` is empty: re-estimating BatchNorm statistics needs at "
            "least one batch of inputs."
        )
    return len(layers)

