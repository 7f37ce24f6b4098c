"""Feature taps: a model's logits and named intermediate maps in one forward pass."""

import keras


class FeatureTaps:
    """Runs a functional model once and returns its logits and tapped maps.

    Builds, once, a functional `keras.Model` with the same input as `model`
    and the outputs `[logits, map_1, ..., map_n]`, where `map_i` is the
    output of the layer named `layer_names[i]` *in `model`'s own graph*. The
    tap model shares `model`'s layers and weights, so calling it is one
    forward pass of `model` that also hands out the intermediate maps.

    The layer is looked up in `model`'s graph rather than through
    `layer.output`, so a layer that other models also call (the stages of a
    `keras_edu.GradedStudent`, shared by every grade's model) is tapped
    where *this* model calls it.

    A `FeatureTaps` is deliberately not a Keras layer: the model that holds
    it must not track the tap model (its weights are the wrapped model's
    and would be counted and saved twice).

    Args:
        model: A functional or `Sequential` `keras.Model` with one output
            (the logits).
        layer_names: Names of top-level layers of `model` whose outputs to
            tap. Duplicates are tapped once.
        role: How errors name the model, e.g. `"the student"` or
            `"teachers[1]"`.

    Example:

    ```python
    import keras, numpy as np
    from keras_edu.feature_taps import FeatureTaps

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    taps = FeatureTaps(model, ["conv"], role="the student")
    logits, maps = taps(np.zeros((2, 8, 8, 1), "float32"))
    maps["conv"].shape  # (2, 6, 6, 4)
    ```
    """

    def __init__(self, model, layer_names, role="the model"):
        graph = functional_graph(model, role, why="tap its features")
        self.names = list(dict.fromkeys(layer_names))
        outputs = [single_output(graph, role, model.name)]
        outputs += [
            layer_output(graph, name, role, model.name) for name in self.names
        ]
        # `graph.input` keeps the input structure (one tensor, list, dict).
        self.model = keras.Model(graph.input, outputs, name=f"{model.name}_taps")
        self.shapes = {
            name: tuple(t.shape) for name, t in zip(self.names, outputs[1:])
        }

    def __call__(self, inputs, training=False):
        """`(logits, {layer_name: map})` from one forward pass."""
        outputs = self.model(inputs, training=training)
        return outputs[0], dict(zip(self.names, outputs[1:]))


def functional_graph(model, role, why):
    """The functional graph of `model` (Sequential models hold one inside)."""
    graph = model
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
    if graph is None or not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(
            f"Cannot {why}: {role} ('{model.name}', a "
            f"{type(model).__name__}) is a subclassed model, whose layers "
            "have no graph to read features from. Build it as a functional "
            "model (`keras.Model(inputs, outputs)`, or a `keras.Sequential` "
            "that starts with `keras.Input`), or expose the features as the "
            "outputs of named layers of a functional model that wraps it."
        )
    return graph


def single_output(graph, role, model_name):
    if len(graph.outputs) != 1:
        raise ValueError(
            f"{role} ('{model_name}') has {len(graph.outputs)} outputs; "
            "keras_edu expects one output, the logits."
        )
    return graph.outputs[0]


def layer_output(graph, name, role, model_name):
    """The output of the layer called `name` in `graph`."""
    nodes = [
        node
        for depth_nodes in graph._nodes_by_depth.values()
        for node in depth_nodes
        if node.operation.name == name
    ]
    if not nodes:
        available = [
            layer.name
            for layer in graph.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ]
        raise ValueError(
            f"{role} ('{model_name}') has no layer named '{name}'. Feature "
            "taps read the outputs of top-level layers; its layers are "
            f"{available}."
        )
    if len(nodes) > 1 or len(nodes[0].outputs) != 1:
        raise ValueError(
            f"The layer '{name}' of {role} ('{model_name}') is called "
            f"{len(nodes)} times or has several outputs, so its output is "
            "ambiguous. Tap a layer that is called once and has one output."
        )
    return nodes[0].outputs[0]


def last_feature_layer(model, role):
    """The name of the layer whose output is `model`'s last feature map.

    The last layer (in graph order) whose output has spatial axes, i.e.
    rank >= 3, such as the last stage of a CNN before its global pooling.
    Without any, the layer that feeds the output layer (the penultimate
    features of an MLP).
    """
    graph = functional_graph(model, role, why="find its last feature map")
    output = single_output(graph, role, model.name)
    by_depth = sorted(graph._nodes_by_depth.items())  # depth 0 is the output
    for _, nodes in by_depth:
        for node in nodes:
            if node.outputs[0] is output or isinstance(
                node.operation, keras.layers.InputLayer
            ):
                continue
            if len(node.outputs) == 1 and len(node.outputs[0].shape) >= 3:
                return node.operation.name
    for _, nodes in by_depth:
        for node in nodes:
            if node.outputs[0] is output:
                parents = node.parent_nodes
                if len(parents) == 1:
                    return parents[0].operation.name
    raise ValueError(
        f"Cannot tell which layer of {role} ('{model.name}') gives its last "
        "feature map. Name it with `feature_layer=`."
    )
