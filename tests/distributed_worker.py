"""Runs one distillation case on 1 device, then data-parallel on 2.

`python distributed_worker.py BACKEND CASE`: on JAX under
`keras.distribution.DataParallel` over 2 virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`), on TensorFlow under
`tf.distribute.MirroredStrategy` over 2 logical CPU devices. Launched by
tests/test_distributed.py in a subprocess, so that the devices exist before
the framework starts and the rest of the suite keeps one. Prints one JSON
line: the largest per-step loss and final-weight differences, and where the
variables live (for AMTML also those of the Distiller's own trained layers,
its TeacherImportance and hint regressors).

Cases: `kd` (one teacher), `specialists` (three), `ed` (a GradedStudent,
three specialists, two grade switches), `amtml` (two generalists, a hint,
the RKD angle term), `amtml_no_angle` (the same without the angle term),
`ed_amtml` (a GradedStudent taught by AMTML with two generalists and a
hint, no angle term) and `ed_amtml_angle` (the same with it).
"""

import json
import os
import sys

BACKEND = sys.argv[1]
os.environ["KERAS_BACKEND"] = BACKEND
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
if BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_edu  # noqa: E402

PARTITION = keras_edu.ClassPartition.contiguous(6, "1:1:1")


def _stage(filters, strides=1, name=None):
    return keras.Sequential([
        keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False),
        # Synchronised on TensorFlow, so that under MirroredStrategy the batch
        # statistics are the global batch's, as on one device (JAX's SPMD
        # step computes them over the global batch anyway).
        keras.layers.BatchNormalization(synchronized=BACKEND == "tensorflow"),
        keras.layers.ReLU(),
    ], name=name)


def _teacher(classes):
    return keras_edu.Teacher(keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(classes)),
    ]), classes=classes)


def _amtml_teacher(width):
    # A generalist whose `features` map (8x8xwidth) a hint reads.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras_edu.Teacher(keras.Model(inputs, keras.layers.Dense(6)(x)))


# AMTML's RKD angle weight per case. The angle of a batch's triplets is not
# a sum over its rows: a replica of tf.distribute that sees half the batch
# computes another term (`amtml` on TensorFlow); and in a curriculum of
# 2-class groups the group's softened outputs lie on a line, every angle is
# 0 or 180 degrees, and the term's gradient is float32 rounding noise, which
# a sharded step rounds differently (`ed_amtml_angle`).
AMTML_ANGLE = {"amtml": 1.0, "amtml_no_angle": 0.0, "ed_amtml": 0.0, "ed_amtml_angle": 1.0}
GRADED = ("ed", "ed_amtml", "ed_amtml_angle")


def _amtml_loss(case):
    # Two generalists mixed by the TeacherImportance layer (beta: the
    # student's stage `s1`) and a hint from `s1` to teacher 0's `features`
    # through a HintRegressor.
    return keras_edu.losses.AMTML(
        hints=[("s1", 0, "features")], angle_weight=AMTML_ANGLE[case])


def _student(case):
    if case in GRADED:
        head = keras.Sequential(
            [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)], name="head")
        stages = [_stage(4, name="s1"), _stage(8, 2, name="s2"), _stage(8, 2, name="s3")]
        return keras_edu.GradedStudent(stages, head, PARTITION, input_shape=(8, 8, 1))
    return keras.Sequential([
        keras.Input((8, 8, 1)), _stage(4, name="s1"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6),
    ])


class _Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["loss"]))


def run(case):
    keras.utils.set_random_seed(0)
    student = _student(case)
    loss = None
    if case == "kd":
        teachers = [_teacher(list(range(6)))]
    elif case in AMTML_ANGLE:
        teachers = [_amtml_teacher(4), _amtml_teacher(6)]
        loss = _amtml_loss(case)
    else:
        teachers = [_teacher(list(g)) for g in PARTITION.groups]
    distiller = keras_edu.Distiller(
        student, teachers, alpha=0.5, temperature=2.0, loss=loss)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 16).astype("int32")
    x = rng.normal(size=(len(y), 8, 8, 1)).astype("float32") + y[:, None, None, None] * 0.1
    losses = _Losses()
    callbacks = [losses]
    graded = case in GRADED
    if graded:
        callbacks.append(keras_edu.GradeCallback(boundaries=[1, 2], seed=0))
    distiller.fit(x, y, batch_size=24, epochs=3, shuffle=False, verbose=0,
                  callbacks=callbacks)
    final = distiller.graduate() if graded else distiller.student
    weights = [keras.ops.convert_to_numpy(w) for w in final.weights]
    meshes = sorted({_placement(v) for v in
                     distiller.trainable_variables + distiller.optimizer.variables})
    teacher_meshes = sorted({_placement(v) for t in teachers for v in t.model.weights})
    # AMTML's own trained layers: the (current grade's) TeacherImportance
    # and the hint regressors, owned and trained by the Distiller.
    amtml = {}
    if loss is not None:
        layers = [distiller.teacher_importance] + list(distiller.hint_regressors)
        variables = [v for layer in layers for v in layer.trainable_variables]
        tracked = {id(v) for v in distiller.trainable_variables}
        amtml = {
            "layers": [layer.name for layer in layers],
            "trained": all(id(v) in tracked for v in variables),
            "meshes": sorted({_placement(v) for v in variables}),
            "weights": [keras.ops.convert_to_numpy(v) for v in variables],
        }
    return losses.values, weights, meshes, teacher_meshes, distiller.grade, amtml


def _placement(variable):
    """'2 devices' for a variable replicated on both devices, else what it is."""
    if BACKEND == "jax":
        mesh = getattr(variable.value.sharding, "mesh", None)
        return f"{mesh.size} devices" if mesh is not None else "1 device"
    replicas = getattr(variable.value, "values", None)  # a MirroredVariable
    return f"{len(replicas)} devices" if replicas is not None else "1 device"


def main(case):
    one, w1, _, _, _, amtml1 = run(case)
    if BACKEND == "jax":
        import jax

        devices = jax.devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices))
        two, w2, meshes, teacher_meshes, grade, amtml2 = run(case)
    else:
        devices = tf.config.list_logical_devices("CPU")
        with tf.distribute.MirroredStrategy([d.name for d in devices]).scope():
            try:
                two, w2, meshes, teacher_meshes, grade, amtml2 = run(case)
            except ValueError as e:  # ED is refused under several replicas.
                print(json.dumps({"devices": len(devices), "refused": str(e)}))
                return
    result = {
        "devices": len(devices),
        "steps": [len(one), len(two)],
        "loss_diff": float(np.max(np.abs(np.array(one) - np.array(two)))),
        "weight_diff": float(max(np.max(np.abs(a - b)) for a, b in zip(w1, w2))),
        "meshes": meshes,
        "teacher_meshes": teacher_meshes,
        "grade": grade,
    }
    if amtml2:
        result["amtml_layers"] = amtml2["layers"]
        result["amtml_trained"] = amtml2["trained"]
        result["amtml_meshes"] = amtml2["meshes"]
        result["amtml_weight_diff"] = float(max(
            np.max(np.abs(a - b)) for a, b in zip(amtml1["weights"], amtml2["weights"])))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[2])
