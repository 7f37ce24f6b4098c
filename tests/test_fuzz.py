"""Property-based fuzz of what `Distiller.fit` is given.

Every generated case either trains one finite step or raises a ValueError
from keras-edu that names the argument (`x` or `y`): never a backend's
internal error, never a NaN loss. Labels vary in shape, dtype, encoding and
values; inputs in shape, dtype, length and NaNs. The default run draws a few dozen cases
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
        st.sampled_from(
            ["valid"] * 4
            + ["sparse", "column", "float", "one_hot", "rows", "wide", "cube", "strings"]
        )
    )
    if kind == "valid":
        values = draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=rows, max_size=rows))
        return np.array(values, "int32")
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


# The student takes (B, 4) float inputs; half the cases keep that shape.
X_KINDS = ["fits"] * 4 + ["int", "wide", "extra_axis", "flat", "one_row_short", "strings"]


def _inputs(kind, rows, rng):
    shape = {"wide": (rows, 5), "extra_axis": (rows, 4, 1), "flat": (rows,)}.get(kind, (rows, 4))
    if kind == "one_row_short":
        shape = (max(rows - 1, 0), 4) if rows else (1, 4)
    if kind == "strings":
        return np.full((rows, 4), "0.5")
    if kind == "int":
        return rng.integers(0, 3, size=shape).astype("int32")
    return rng.random(shape).astype("float32")


@st.composite
def cases(draw):
    y = draw(labels())
    kind = draw(st.sampled_from(X_KINDS))
    x = _inputs(kind, len(y), np.random.default_rng(draw(st.integers(0, 2**16))))
    if kind == "fits" and len(y) and draw(st.booleans()) and draw(st.booleans()):
        x[draw(st.integers(0, len(y) - 1)), 0] = np.nan
    return x, y, draw(st.sampled_from([1, 4, 32]))


def _fit_or_clear_error(case):
    x, y, batch_size = case
    try:
        history = _distiller().fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    except ValueError as error:
        message = str(error)
        named = [arg for arg in ("`x`", "`y`") if arg in message]
        assert named, message
        hypothesis.event(f"a ValueError naming {named[0]}")
        return
    assert np.isfinite(history.history["loss"][0]), (x, y)
    hypothesis.event("one finite step")


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(cases())
def test_fit_trains_or_names_the_bad_argument(case):
    _fit_or_clear_error(case)


@pytest.mark.slow
@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(cases())
def test_fit_trains_or_names_the_bad_argument_long(case):
    _fit_or_clear_error(case)
