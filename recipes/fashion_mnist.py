r"""The whole story on Fashion-MNIST, offline: teachers, then scratch vs KD vs ED.

Trains one full teacher and three specialists (one per class group), then
three students with the same architecture and epoch budget: from scratch,
with Hinton KD from the full teacher, and with education distillation from
the three specialists (the student grows one stage per grade). Prints a
comparison table, writes a results JSON and saves the graduated student as
a `.keras` file that loads without keras_edu.

Usage:

    python recipes/fashion_mnist.py                # ~10 minutes on 2 CPU cores
    python recipes/fashion_mnist.py --quick        # ~1-2 minutes, for CI
    KERAS_BACKEND=jax python recipes/fashion_mnist.py --seed=1

Data: read from local files first (the Keras cache, or Debian's
`dataset-fashion-mnist` package: `apt-get install dataset-fashion-mnist`).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

import keras
import numpy as np

import keras_edu

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "A small, fast run (a subset of the data, few epochs).")
flags.DEFINE_integer("seed", 0, "Random seed of weights, shuffles and subsets.")
flags.DEFINE_integer("teacher_epochs", 4, "Epochs of each teacher.")
flags.DEFINE_integer("epochs", 6, "Epochs of each student (the same budget for all methods).")
flags.DEFINE_list("boundaries", ["2", "4"], "Epochs at which ED grades 2 and 3 start.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("train_size", 0, "Use only this many training images (0: all 60,000).")
flags.DEFINE_string("data_dir", None, "Directory with the four Fashion-MNIST IDX files.")
flags.DEFINE_string("out_dir", "runs/fashion_mnist", "Where to write results and models.")
flags.DEFINE_bool("overwrite", False, "Overwrite results already in --out_dir.")

GROUPS = "1:1:1"  # 10 classes -> [0, 3), [3, 6), [6, 10)


def conv_net(widths, num_classes, name):
    """A 3-stage CNN whose stages end at layers named stage1_out..stage3_out."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for stage, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
        x = keras.layers.Conv2D(
            width, 3, strides=stride, padding="same", use_bias=False,
            name=f"stage{stage}_conv",
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"stage{stage}_bn")(x)
        x = keras.layers.ReLU(name=f"stage{stage}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def optimizer():
    return keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)


def train_teachers(data, partition, epochs, batch_size):
    (x, y), (x_test, y_test) = data
    full = conv_net((32, 64, 128), 10, "teacher_full")
    full.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    full.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=2)
    scores = {"full": full.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]}
    specialists = []
    for k, group in enumerate(partition.groups):
        keep, keep_test = np.isin(y, group), np.isin(y_test, group)
        local = {c: i for i, c in enumerate(group)}
        to_local = np.vectorize(local.get)
        model = conv_net((32, 64, 128), len(group), f"teacher_group{k + 1}")
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(x[keep], to_local(y[keep]), epochs=epochs, batch_size=batch_size, verbose=2)
        scores[f"group{k + 1}"] = model.evaluate(
            x_test[keep_test], to_local(y_test[keep_test]), verbose=0, return_dict=True
        )["accuracy"]
        specialists.append(keras_edu.Teacher(model, classes=group))
    return keras_edu.Teacher(full), specialists, scores


def run_student(method, data, teachers, partition, args):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(args["seed"] + 1)
    callbacks = []
    if method == "scratch":
        model = conv_net((16, 32, 64), 10, "student")
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    elif method == "kd":
        model = keras_edu.Distiller(conv_net((16, 32, 64), 10, "student"), [teachers["full"]])
        model.compile(optimizer(), metrics=["accuracy"])
    else:
        graded = keras_edu.GradedStudent.from_model(
            conv_net((16, 32, 64), 10, "student"),
            split_at=["stage1_out", "stage2_out", "stage3_out"],
            partition=partition,
        )
        model = keras_edu.Distiller(graded, teachers["specialists"])
        model.compile(optimizer(), metrics=["accuracy"])
        callbacks.append(keras_edu.GradeCallback(boundaries=args["boundaries"], seed=args["seed"]))
    timer = EpochTimer()
    history = model.fit(
        x, y, epochs=args["epochs"], batch_size=args["batch_size"], verbose=2,
        validation_data=(x_test, y_test), callbacks=callbacks + [timer],
    )
    student = model.graduate() if method != "scratch" else model
    top1 = history.history["val_accuracy"]
    per_group = per_group_accuracy(student, x_test, y_test, partition)
    return student, {
        "method": method,
        "top1_last": float(top1[-1]),
        "top1_best": float(max(top1)),
        "per_group_top1": per_group,
        "epoch_seconds": timer.seconds,
        "student_params": int(student.count_params()),
    }


def per_group_accuracy(model, x, y, partition):
    predictions = np.argmax(model.predict(x, verbose=0), axis=-1)
    return [float(np.mean(predictions[np.isin(y, g)] == y[np.isin(y, g)])) for g in partition.groups]


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self._start, 3))


def load_data(args):
    try:
        (x, y), (x_test, y_test) = keras_edu.data.load_fashion_mnist(args["data_dir"])
    except FileNotFoundError as error:
        sys.exit(f"Fashion-MNIST not found. {error}")
    rng = np.random.default_rng(args["seed"])
    if args["train_size"]:
        keep = rng.permutation(len(x))[: args["train_size"]]
        x, y = x[keep], y[keep]
        x_test, y_test = x_test[: max(args["train_size"] // 5, 1000)], y_test[: max(args["train_size"] // 5, 1000)]
    add_channel = lambda images: images[..., None].astype("float32")
    return (add_channel(x), y.astype("int32")), (add_channel(x_test), y_test.astype("int32"))


def settings():
    args = {
        "seed": FLAGS.seed,
        "teacher_epochs": FLAGS.teacher_epochs,
        "epochs": FLAGS.epochs,
        "boundaries": [int(b) for b in FLAGS.boundaries],
        "batch_size": FLAGS.batch_size,
        "train_size": FLAGS.train_size,
        "data_dir": FLAGS.data_dir,
    }
    if FLAGS.quick:
        args.update(teacher_epochs=1, epochs=3, boundaries=[1, 2], train_size=3000)
    return args


def main(argv):
    del argv
    args = settings()
    results_path = os.path.join(FLAGS.out_dir, f"results_seed{args['seed']}.json")
    if os.path.exists(results_path) and not FLAGS.overwrite:
        sys.exit(f"{results_path} exists. Pass --overwrite to replace it, or another --out_dir.")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    keras.utils.set_random_seed(args["seed"])
    data = load_data(args)
    partition = keras_edu.ClassPartition.contiguous(10, GROUPS)
    full, specialists, teacher_scores = train_teachers(data, partition, args["teacher_epochs"], args["batch_size"])
    teachers = {"full": full, "specialists": specialists}
    rows = []
    for method in ("scratch", "kd", "ed"):
        student, row = run_student(method, data, teachers, partition, args)
        row["student_path"] = os.path.join(FLAGS.out_dir, f"student_{method}_seed{args['seed']}.keras")
        student.save(row["student_path"])
        rows.append(row)
    report = {
        "dataset": "fashion_mnist",
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "settings": args,
        "teacher_top1": teacher_scores,
        "students": rows,
    }
    with open(results_path, "w") as f:
        json.dump(report, f, indent=2)
    print_table(rows, teacher_scores)
    print(f"\nResults: {results_path}")


def print_table(rows, teacher_scores):
    print("\nTeachers (test top-1): " + ", ".join(f"{k} {v:.4f}" for k, v in teacher_scores.items()))
    print(f"\n{'method':<8} {'top1 last':>9} {'top1 best':>9} {'per-group top1 (1 / 2 / 3)':>28} {'s/epoch':>8}")
    for row in rows:
        groups = " / ".join(f"{g:.3f}" for g in row["per_group_top1"])
        print(
            f"{row['method']:<8} {row['top1_last']:>9.4f} {row['top1_best']:>9.4f} "
            f"{groups:>28} {np.mean(row['epoch_seconds']):>8.2f}"
        )


if __name__ == "__main__":
    app.run(main)
