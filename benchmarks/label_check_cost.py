"""Cost of the in-step label count (`keras_edu.label_checks.BadLabelCount`).

Times `Distiller.fit` epochs on labels served by a `PyDataset` (so the
count runs in every step) with the count on and with it replaced by a
no-op, alternating, in one run; prints the median epoch times and their
ratio (the target: within the machine's noise of 1.0).

    KERAS_BACKEND=torch python benchmarks/label_check_cost.py --repeats 3
"""

import argparse
import time

import keras
import numpy as np

import keras_edu


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


def epoch_seconds(distiller, data):
    start = time.perf_counter()
    distiller.fit(data, epochs=1, verbose=0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.samples)
    data = Batches(x, y, args.batch_size)
    student = keras_edu.models.cifar_resnet(8, [8, 8, 16, 32], num_classes=10, input_shape=(28, 28, 1))
    teacher = keras_edu.models.resnet8(num_classes=10, input_shape=(28, 28, 1))
    distiller = keras_edu.Distiller(student, [teacher])
    distiller.compile(optimizer="sgd")
    epoch_seconds(distiller, data)  # compile
    counting = distiller.label_check.update_state
    times = {"count on": [], "count off": []}
    for _ in range(args.repeats):
        for mode in times:
            distiller.label_check.update_state = (
                counting if mode == "count on" else (lambda y, sample_weight=None: None)
            )
            distiller.make_train_function(force=True)
            epoch_seconds(distiller, data)  # retrace
            times[mode].append(epoch_seconds(distiller, data))
    on, off = (float(np.median(times[m])) for m in ("count on", "count off"))
    print("| backend | epoch, count on (s) | epoch, count off (s) | ratio |")
    print("|---|---|---|---|")
    print(f"| {keras.backend.backend()} | {on:.2f} | {off:.2f} | {on / off:.3f} |")


if __name__ == "__main__":
    main()
