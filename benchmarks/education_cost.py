"""Training cost of scratch, KD and ED, with teachers in every step or cached.

Counts with `keras_edu.cost.forward_flops` (the model of
`keras_edu.cost.TrainingCost`: 3 student passes per example and epoch, one
pass per teacher that runs on it) the setting of docs/results.md ("Education
distillation with a small student"): ResNet-8 at widths 8/8/16/32, ResNet-20
teachers (one full, three specialists of groups 1:1:1), 24 epochs of batch
64, ED `+restart+full+retire` with grades at epochs 3 and 6. Cached teachers
(`Distiller(..., cache_teachers=True)`) run once per sample they teach: the
full teacher on all, a specialist on its group's samples, none for the last
group's specialist (retired before its group is seen). Nothing trains; it
prints a table in a few seconds.

    KERAS_BACKEND=jax python benchmarks/education_cost.py
"""

import math

import numpy as np

import keras_edu
from keras_edu.cost import forward_flops

EPOCHS, BATCH = 24, 64
GRADES = [1] * 3 + [2] * 3 + [3] * 18  # boundaries 0.125, 0.25 of 24 epochs
INPUT = (28, 28, 1)
TRAIN_SIZE = 20000


def main():
    (_, y), _ = keras_edu.data.load_fashion_mnist()
    if len(y) > TRAIN_SIZE:
        # The full set: the seeded subset of benchmarks/education_accuracy.py.
        y = y[np.random.default_rng(0).permutation(len(y))[:TRAIN_SIZE]]
    partition = keras_edu.ClassPartition.contiguous(10, "1:1:1")
    counts = [int(np.isin(y, g).sum()) for g in partition.groups]
    n = len(y)
    student = keras_edu.models.cifar_resnet(8, [8, 8, 16, 32], num_classes=10, input_shape=INPUT)
    graded = keras_edu.GradedStudent.from_model(
        student, keras_edu.models.stage_ends("resnet8"), partition
    )
    grade_flops = {g: forward_flops(graded.model_for_grade(g)) for g in (1, 2, 3)}
    full = forward_flops(keras_edu.models.resnet20(num_classes=10, input_shape=INPUT))
    specialists = [
        forward_flops(keras_edu.models.resnet20(num_classes=len(g), input_shape=INPUT))
        for g in partition.groups
    ]

    def served(samples):  # every curriculum batch is full
        return math.ceil(samples / BATCH) * BATCH

    scratch = EPOCHS * served(n) * 3 * grade_flops[3]
    ed_student = ed_teachers = 0
    for grade in GRADES:
        seen = counts[:grade]
        examples = served(sum(seen))
        ed_student += examples * 3 * grade_flops[grade]
        # Grades 1-2: the group's specialist and the full teacher; grade 3
        # (specialists retired): the full teacher only.
        share = sum(c * f for c, f in zip(seen, specialists)) / sum(seen) if grade < 3 else 0
        ed_teachers += examples * (full + share)
    rows = {
        "scratch": (scratch, scratch),
        "KD (full teacher)": (scratch + EPOCHS * served(n) * full, scratch + n * full),
        "ED +restart+full+retire, grades at 3, 6": (
            ed_student + ed_teachers,
            ed_student + n * full + sum(c * f for c, f in zip(counts[:2], specialists[:2])),
        ),
        "the same, every teacher cached on every sample": (
            None,
            ed_student + n * (full + sum(specialists)),
        ),
    }
    kd_live, kd_cached = rows["KD (full teacher)"]
    print(f"{n} training images, groups {counts}")
    print("| method | cost, teachers in every step | / KD | cost, cached teachers | / cached KD |")
    print("|---|---|---|---|---|")
    for name, (live, cached) in rows.items():
        live_text = f"{live:.2e} | {live / kd_live:.2f}" if live else " | "
        print(f"| {name} | {live_text} | {cached:.2e} | {cached / kd_cached:.2f} |")


if __name__ == "__main__":
    main()
