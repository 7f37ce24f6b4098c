"""Fashion-MNIST accuracy of AMTML-KD against AVER and a student from scratch.

Three teachers of different architectures, all trained on all ten classes
(and cached under `--cache_dir`, keyed by architecture, seed, training size
and epochs):

    cnn      conv32-conv32-pool-conv64-conv64-pool, global average pooling
    resnet8  `keras_edu.models.resnet8` (CIFAR ResNet, 16/32/64 channels)
    mlp      784-512-256-10 with dropout (no feature map: it gives no hint)

teach one small CNN student (conv16-pool-conv32-pool-conv32, global average
pooling, dense; about 15k parameters) with four methods, each for every seed
of `--seeds` (the seed sets the student's initialisation and the shuffling):

    scratch        cross-entropy only
    AVER           `keras_edu.Distiller(student, teachers)`: the teachers'
                   softened probabilities averaged (default `SoftTargetKD`)
    AMTML weights  `loss=AMTML(angle_weight=0)`: instance-adaptive weights
    AMTML full     `loss=AMTML(hints=..., angle_weight=1)`: weights, two hints
                   (student stage2_out 7x7 -> cnn block2_out 7x7x64; student
                   stage1_out 14x14 -> resnet8 stage2_out 14x14x32) and the
                   RKD angle term

Every distiller uses `alpha=0.3` (cross-entropy weight) and `T=4`; all runs
use Adam(1e-3), batch 128, the same number of epochs, and report the test
accuracy (the real 10k test split, inference mode) after the last epoch and
at the best epoch, as mean +- std over seeds. The mean teacher weights of
the last epoch of the AMTML runs are printed too (the training log's
`teacher_{k}_weight`), and, after training, the learned weights of every
test image (the student's `beta` features through the trained
`distiller.teacher_importance`): their mean per method and, for the chart
run (the first seed's AMTML full run, else AMTML weights), their mean per
class. `--json` also writes the per-image test weights of every AMTML run
to `<json>_test_weights.npz`; `--chart` draws the chart run's weights per
class with `keras_edu.visualize.teacher_weight_chart`.

The full protocol (60k images, tens of epochs) does not fit a CPU budget:
`--train_size` and `--epochs` shrink it, and the table says what ran.

Usage:

    KERAS_BACKEND=jax taskset -c 0 python benchmarks/amtml_accuracy.py \\
        --train_size 10000 --epochs 6 --teacher_epochs 6 --seeds 0,1,2 \\
        --cache_dir /tmp/amtml_teachers --json /tmp/amtml_acc.json \\
        --chart docs/img/amtml_teacher_weights_fashion_mnist.png
"""

import argparse
import json
import os
import statistics
import time

METHODS = ("scratch", "AVER", "AMTML weights", "AMTML full")
TEACHERS = ("cnn", "resnet8", "mlp")
HINTS = [("stage2_out", 0, "block2_out"), ("stage1_out", 1, "stage2_out")]
ALPHA = 0.3
TEMPERATURE = 4.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train_size", type=int, default=10000,
                        help="Training images (a fixed random subset).")
    parser.add_argument("--epochs", type=int, default=6, help="Student epochs.")
    parser.add_argument("--teacher_epochs", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cache_dir", default=os.path.join("/tmp", "amtml_teachers"))
    parser.add_argument("--data_dir", default=None,
                        help="Directory of the Fashion-MNIST IDX files.")
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--chart", default=None,
                        help="Save the chart of the learned test-set teacher "
                             "weights per class (PNG) here.")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return args


# ---------------------------------------------------------------------------
# Data and models.
# ---------------------------------------------------------------------------


def load_data(args):
    import numpy as np

    import keras_edu

    (x_train, y_train), (x_test, y_test) = keras_edu.data.load_fashion_mnist(
        args.data_dir
    )
    # The same subset for every run: the first `train_size` of a fixed shuffle.
    order = np.random.default_rng(1234).permutation(len(x_train))[: args.train_size]

    def prepare(x):
        return (x.astype("float32") / 255.0)[..., None]

    return (
        (prepare(x_train[order]), y_train[order].astype("int32")),
        (prepare(x_test), y_test.astype("int32")),
    )


def build_teacher(name):
    import keras

    import keras_edu

    if name == "resnet8":
        return keras_edu.models.resnet8(num_classes=10, input_shape=(28, 28, 1))
    if name == "mlp":
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dense(10),
            ],
            name="mlp",
        )
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for block, width in enumerate((32, 64), start=1):
        for i in range(2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"block{block}_conv{i + 1}")(x)
            # Momentum 0.9 (the zoo's): short runs end with warm statistics.
            x = keras.layers.BatchNormalization(
                momentum=0.9, name=f"block{block}_bn{i + 1}"
            )(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{i + 1}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_out")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn")


def build_student():
    import keras

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(name="stage1_out")(x)  # 14x14x16
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(name="stage2_out")(x)  # 7x7x32
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                            name="stage3_out")(x)  # 7x7x32: beta
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="student")


def accuracy_callback(student, x_test, y_test):
    """Records the test accuracy after every epoch (the student alone, in
    inference mode) and the last logged mean teacher weights."""
    import keras
    import numpy as np

    class TestAccuracy(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.accuracies = []
            self.teacher_weights = None

        def on_epoch_end(self, epoch, logs=None):
            logits = student.predict(x_test, batch_size=1000, verbose=0)
            self.accuracies.append(float(np.mean(logits.argmax(-1) == y_test)))
            weights = [
                logs[f"teacher_{k}_weight"]
                for k in range(len(TEACHERS))
                if f"teacher_{k}_weight" in (logs or {})
            ]
            if weights:
                self.teacher_weights = [float(w) for w in weights]

    return TestAccuracy()


def teachers(args, train, test):
    """The three trained teachers, loaded from the cache or trained now."""
    import keras
    import numpy as np

    os.makedirs(args.cache_dir, exist_ok=True)
    models, report = [], []
    for index, name in enumerate(TEACHERS):
        path = os.path.join(
            args.cache_dir,
            f"{name}_seed{index}_n{args.train_size}_e{args.teacher_epochs}"
            f"_{keras.backend.backend()}.keras",
        )
        start = time.process_time()
        if os.path.exists(path):
            model = keras.saving.load_model(path)
            status = "cached"
        else:
            keras.utils.set_random_seed(100 + index)
            model = build_teacher(name)
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            model.fit(*train, batch_size=args.batch_size, epochs=args.teacher_epochs,
                      verbose=0)
            model.save(path)
            status = "trained"
        logits = model.predict(test[0], batch_size=1000, verbose=0)
        accuracy = float(np.mean(logits.argmax(-1) == test[1]))
        report.append({"teacher": name, "params": model.count_params(),
                       "test_accuracy": accuracy, "status": status,
                       "cpu_seconds": time.process_time() - start})
        models.append(model)
    return models, report


def run_method(method, seed, teacher_models, train, test, args):
    import keras
    import numpy as np

    import keras_edu

    keras.utils.set_random_seed(seed)
    student = build_student()
    callback = accuracy_callback(student, *test)
    if method == "scratch":
        model = student
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    else:
        loss = None
        if method == "AMTML weights":
            loss = keras_edu.losses.AMTML(angle_weight=0.0)
        elif method == "AMTML full":
            loss = keras_edu.losses.AMTML(hints=HINTS, angle_weight=1.0)
        model = keras_edu.Distiller(
            student, teacher_models, alpha=ALPHA, temperature=TEMPERATURE, loss=loss
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.process_time()
    model.fit(*train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              callbacks=[callback])
    cpu_seconds = time.process_time() - start
    result = {
        "method": method,
        "seed": seed,
        "last": callback.accuracies[-1],
        "best": max(callback.accuracies),
        "per_epoch": callback.accuracies,
        "teacher_weights": callback.teacher_weights,
        "cpu_seconds": cpu_seconds,
    }
    if method.startswith("AMTML"):
        weights = model.teacher_weights(test[0], batch_size=1000).astype("float64")
        result["_test_weights"] = weights  # per image; not in the JSON
        result["test_teacher_weights"] = [float(w) for w in weights.mean(axis=0)]
        result["test_teacher_weights_per_class"] = [
            [float(w) for w in weights[test[1] == c].mean(axis=0)]
            for c in range(10)
        ]
        result["test_teacher_weights_range"] = [
            [float(w) for w in weights.min(axis=0)],
            [float(w) for w in weights.max(axis=0)],
        ]
        # How far the weights moved from the uniform 1/K (mean |a - 1/K|).
        result["test_teacher_weights_mean_abs_dev"] = float(
            np.mean(np.abs(weights - 1.0 / len(TEACHERS)))
        )
    return result


def chart_run(runs, args):
    """The run whose test weights are charted: first seed, AMTML full."""
    for method in ("AMTML full", "AMTML weights"):
        for run in runs:
            if run["method"] == method and run["seed"] == args.seeds[0]:
                return run
    return None


def mean_std(values):
    values = [100.0 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def format_table(args, teacher_report, runs, cpu_seconds):
    import keras

    lines = [
        (
            f"Fashion-MNIST, {args.train_size} training images (fixed subset), "
            f"full 10k test split; student {args.epochs} epochs, teachers "
            f"{args.teacher_epochs} epochs; Adam(1e-3), batch {args.batch_size}; "
            f"alpha={ALPHA} (CE weight), T={TEMPERATURE}; seeds {args.seeds}; "
            f"backend {keras.backend.backend()}; {cpu_seconds:.0f} CPU s in all."
        ),
        "",
        "| teacher | params | test accuracy (%) |",
        "|---|---:|---:|",
    ]
    for t in teacher_report:
        lines.append(f"| {t['teacher']} | {t['params']:,} | {100 * t['test_accuracy']:.2f} |")
    lines += [
        "",
        (
            f"| student ({build_student().count_params()} params) | last epoch (%) "
            "| best epoch (%) | per seed, last "
            "| mean teacher weights (cnn, resnet8, mlp), last epoch |"
        ),
        "|---|---:|---:|---|---|",
    ]
    for method in args.methods:
        rows = [r for r in runs if r["method"] == method]
        if not rows:
            continue
        weights = "-"
        if rows[0]["teacher_weights"]:
            mean = [statistics.mean(r["teacher_weights"][k] for r in rows)
                    for k in range(len(TEACHERS))]
            weights = ", ".join(f"{w:.3f}" for w in mean)
        per_seed = ", ".join(f"{100 * r['last']:.2f}" for r in rows)
        lines.append(
            f"| {method} | {mean_std([r['last'] for r in rows])} | "
            f"{mean_std([r['best'] for r in rows])} | {per_seed} | {weights} |"
        )
    amtml = [m for m in args.methods if m.startswith("AMTML")]
    if amtml:
        lines += [
            "",
            "| AMTML run | learned teacher weights on the test set (cnn, resnet8, "
            "mlp), mean over images and seeds | min..max over images "
            "| mean abs(a - 1/3) |",
            "|---|---|---|---|",
        ]
        for method in amtml:
            rows = [r for r in runs if r["method"] == method]
            if not rows:
                continue
            mean = [statistics.mean(r["test_teacher_weights"][k] for r in rows)
                    for k in range(len(TEACHERS))]
            low = [min(r["test_teacher_weights_range"][0][k] for r in rows)
                   for k in range(len(TEACHERS))]
            high = [max(r["test_teacher_weights_range"][1][k] for r in rows)
                    for k in range(len(TEACHERS))]
            deviation = statistics.mean(
                r["test_teacher_weights_mean_abs_dev"] for r in rows
            )
            lines.append(
                f"| {method} | {', '.join(f'{w:.4f}' for w in mean)} | "
                + ", ".join(f"{a:.4f}..{b:.4f}" for a, b in zip(low, high))
                + f" | {deviation:.2e} |"
            )
    run = chart_run(runs, args)
    if run is not None:
        from keras_edu.data import FASHION_MNIST_CLASS_NAMES

        lines += [
            "",
            f"Learned test-set teacher weights per class, {run['method']}, "
            f"seed {run['seed']}:",
            "",
            "| class | cnn | resnet8 | mlp |",
            "|---|---:|---:|---:|",
        ]
        for c, weights in enumerate(run["test_teacher_weights_per_class"]):
            lines.append(
                f"| {c} {FASHION_MNIST_CLASS_NAMES[c]} | "
                + " | ".join(f"{w:.4f}" for w in weights) + " |"
            )
    return "\n".join(lines)


def save_chart(run, labels, path):
    """`teacher_weight_chart` of a run's per-image test weights, saved."""
    from keras_edu import visualize
    from keras_edu.data import FASHION_MNIST_CLASS_NAMES

    figure = visualize.teacher_weight_chart(
        run["_test_weights"], labels, teacher_names=list(TEACHERS),
        class_names=list(FASHION_MNIST_CLASS_NAMES),
    )
    axes = figure.axes[0]
    axes.set_title(
        f"Mean learned teacher weight per class, {run['method']}, seed "
        f"{run['seed']} (Fashion-MNIST test split)"
    )
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def main(argv=None):
    args = parse_args(argv)
    start = time.process_time()
    train, test = load_data(args)
    teacher_models, teacher_report = teachers(args, train, test)
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            runs.append(run_method(method, seed, teacher_models, train, test, args))
            r = runs[-1]
            print(f"... {method:<14} seed {seed}: last {100 * r['last']:.2f}% "
                  f"best {100 * r['best']:.2f}% ({r['cpu_seconds']:.0f} CPU s)",
                  flush=True)
    table = format_table(args, teacher_report, runs, time.process_time() - start)
    print(table)
    if args.chart and chart_run(runs, args) is not None:
        save_chart(chart_run(runs, args), test[1], args.chart)
        print(f"chart: {args.chart}")
    if args.json:
        import numpy as np

        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "teachers": teacher_report,
                       "runs": [{k: v for k, v in r.items() if not k.startswith("_")}
                                for r in runs]}, f, indent=2)
        weights = {f"{r['method']}/seed{r['seed']}": r["_test_weights"]
                   for r in runs if "_test_weights" in r}
        if weights:
            np.savez_compressed(os.path.splitext(args.json)[0] + "_test_weights.npz",
                                labels=test[1], **weights)


if __name__ == "__main__":
    main()
