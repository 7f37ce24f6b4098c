"""Prints how Distiller.fit answers the bad inputs of issue 19 on this backend.

    for b in tensorflow jax torch; do KERAS_BACKEND=$b python benchmarks/bad_input_table.py; done
"""
import os, numpy as np, keras, keras_edu
def model(): return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
x = np.random.default_rng(0).random((8, 4)).astype("float32")
nan_x = x.copy(); nan_x[3, 1] = np.nan
cases = {"labels all 12": (x, np.full(8, 12)), "labels all -1": (x, np.full(8, -1)),
         "float labels in [0, 1)": (x, np.full(8, 0.25, "float32")), "one NaN pixel": (nan_x, np.arange(8) % 6)}
import tensorflow as tf
for name, (xx, yy) in cases.items():
    for kind in ("numpy", "tf.data"):
        d = keras_edu.Distiller(model(), [model()]); d.compile(optimizer="sgd")
        data = dict(x=xx, y=yy, batch_size=4) if kind == "numpy" else dict(x=tf.data.Dataset.from_tensor_slices((xx, yy)).batch(4))
        try:
            h = d.fit(epochs=1, verbose=0, **data); out = f"trains, loss {h.history['loss'][0]:.3f}"
        except Exception as e:
            out = f"{type(e).__name__}: {str(e)[:70]}"
        print(f"{os.environ['KERAS_BACKEND']} | {name} | {kind} | {out}")
