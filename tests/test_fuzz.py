"""Property-based fuzz of what `Distiller.fit` is given.

Every generated case either trains one finite step or raises a ValueError
from keras-edu that names the argument (`x` or `y`): never a backend's
internal error, never a NaN loss. The default run draws a few dozen cases
per backend, seeded and reproducible; `-m slow` draws many more.
"""

import keras
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import keras_edu  # noqa: E402

NUM_CLASSES = 6


def _distiller():
    def model():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(NUM_CLASSES)])

    distiller = keras_edu.Distiller(model(), [model()])
    distiller.compile(optimizer="sgd")
    return distiller


@st.composite
def labels(draw):
    rows = draw(st.integers(0, 9))
    kind = draw(
        st.sampled_from(["sparse", "column", "float", "one_hot", "rows", "wide", "cube", "strings"])
    )
    if kind in ("sparse", "column"):
        dtype = draw(st.sampled_from(["int32", "int64", "int8"]))
        values = draw(st.lists(st.integers(-3, 9), min_size=rows, max_size=rows))
        y = np.array(values, dtype)
        return y.reshape(-1, 1) if kind == "column" else y
    if kind == "float":
        values = draw(
            st.lists(st.sampled_from([0.0, 1.0, 5.0, 0.5, -1.0, 6.0, np.nan, np.inf]),
                     min_size=rows, max_size=rows)
        )
        return np.array(values, "float32")
    if kind == "one_hot":
        classes = draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=rows, max_size=rows))
        scale = draw(st.sampled_from([1.0, 1.0, 2.0, -1.0]))
        return np.eye(NUM_CLASSES, dtype="float32")[classes].reshape(rows, NUM_CLASSES) * scale
    if kind == "rows":
        return np.full((rows, NUM_CLASSES), 1.0 / NUM_CLASSES, "float32")
    if kind == "wide":
        return np.zeros((rows, 3), "int32")
    if kind == "cube":
        return np.zeros((rows, 2, 2), "int32")
    return np.array(["cat"] * rows)


@st.composite
def cases(draw):
    y = draw(labels())
    x = np.random.default_rng(draw(st.integers(0, 2**16))).random((len(y), 4)).astype("float32")
    if len(y) and draw(st.booleans()) and draw(st.booleans()):
        x[draw(st.integers(0, len(y) - 1)), 0] = np.nan
    return x, y, draw(st.sampled_from([1, 4, 32]))


def _fit_or_clear_error(case):
    x, y, batch_size = case
    try:
        history = _distiller().fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    except ValueError as error:
        message = str(error)
        assert "`y`" in message or "`x`" in message, message
        hypothesis.event("a ValueError naming the argument")
        return
    assert np.isfinite(history.history["loss"][0]), (x, y)
    hypothesis.event("one finite step")


@settings(max_examples=24, derandomize=True, deadline=None, database=None)
@given(cases())
def test_fit_trains_or_names_the_bad_argument(case):
    _fit_or_clear_error(case)


@pytest.mark.slow
@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(cases())
def test_fit_trains_or_names_the_bad_argument_long(case):
    _fit_or_clear_error(case)
