"""Training-cost accounting: FLOPs by hand, and train_cost through grade switches."""

import keras
import numpy as np
import pytest

import keras_edu
from keras_edu.cost import TrainingCost
from keras_edu.cost import forward_flops


def test_conv_and_dense_flops_match_a_hand_count():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same"),  # 4x4x4 outputs
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    conv = 2 * (4 * 4 * 4) * (3 * 3 * 3)
    dense = 2 * 10 * 64
    assert forward_flops(model) == conv + dense


def test_depthwise_and_nested_blocks_are_counted():
    block = keras_edu.layers.TeachingReference(num_classes=5, width=6)
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), keras.layers.DepthwiseConv2D(3, padding="same"), block]
    )
    depthwise = 2 * (6 * 6 * 2) * 9
    reference = 2 * (6 * 6 * 6) * 2 + 2 * 5 * 6  # 1x1 conv 2->6, dense 6->5
    assert forward_flops(model) == depthwise + reference
    # The recording hooks are gone afterwards.
    assert "call" not in vars(model.layers[0])


def test_training_cost_follows_grades_and_the_curriculum():
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    target = keras_edu.models.cifar_resnet(
        8, [4, 4, 8, 8], num_classes=6, input_shape=(8, 8, 1)
    )
    graded = keras_edu.GradedStudent.from_model(
        target, ["stage1_out", "stage2_out", "stage3_out"], partition
    )
    teachers = []
    for width, group in zip((3, 5, 7), partition.groups):
        model = keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Conv2D(width, 3),
             keras.layers.Flatten(), keras.layers.Dense(len(group))]
        )
        teachers.append(keras_edu.Teacher(model, classes=group))
    distiller = keras_edu.Distiller(graded, teachers)
    distiller.compile(optimizer="sgd")
    rng = np.random.default_rng(0)
    x = rng.random((48, 8, 8, 1)).astype("float32")
    y = np.repeat(np.arange(6), 8)  # 16 samples per group
    cost = TrainingCost(batch_size=8)
    history = distiller.fit(
        x, y, epochs=3, batch_size=8, verbose=0,
        callbacks=[keras_edu.GradeCallback([1, 2]), cost],
    )
    t = [forward_flops(teacher) for teacher in teachers]
    expected, total = [], 0.0
    for grade, steps in ((1, 2), (2, 4), (3, 6)):
        student = 3 * forward_flops(graded.model_for_grade(grade))
        # Equal groups: each seen group's specialist teaches its share.
        teacher = sum(t[:grade]) / grade
        total += steps * 8 * (student + teacher)
        expected.append(total)
    np.testing.assert_allclose(history.history["train_cost"], expected, rtol=1e-9)


def test_training_cost_of_plain_distiller_runs_every_teacher():
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teachers = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
    distiller = keras_edu.Distiller(student, teachers)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(
        np.zeros((10, 4), "float32"), np.zeros((10,), "int32"), batch_size=5,
        epochs=1, verbose=0, callbacks=[TrainingCost(batch_size=5)],
    )
    per_example = 3 * (2 * 4 * 3) + 2 * (2 * 4 * 3)
    assert history.history["train_cost"] == [10 * per_example]




def test_training_cost_counts_cached_teachers_once():
    # Teachers of widths 3 and 3 over 4 inputs; the student a Dense(4 -> 3).
    # Cached: each teacher runs once over the 10 training examples when fit
    # starts, and every epoch costs the student's 3 passes only.
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teachers = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
    distiller = keras_edu.Distiller(student, teachers, cache_teachers=True)
    distiller.compile(optimizer="sgd")
    history = distiller.fit(
        np.zeros((10, 4), "float32"), np.zeros((10,), "int32"), batch_size=5,
        epochs=2, verbose=0, callbacks=[TrainingCost(batch_size=5)],
    )
    fill = 10 * 2 * (2 * 4 * 3)
    student_epoch = 10 * 3 * (2 * 4 * 3)
    assert history.history["train_cost"] == [fill + student_epoch, fill + 2 * student_epoch]
@pytest.mark.parametrize("bad", [0, 2.5, None])
def test_training_cost_checks_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        TrainingCost(batch_size=bad)


def test_cost_chart_draws_one_line_per_method_and_checks_lengths(tmp_path):
    pytest.importorskip("matplotlib")
    from keras_edu import visualize

    runs = {
        "kd": {"train_cost": [1.0, 2.0, 3.0], "top1": [0.5, 0.6, 0.7]},
        "ed": {"train_cost": [0.2, 0.5, 1.5], "top1": [0.3, 0.4, 0.65], "boundaries": [1, 2]},
    }
    figure = visualize.cost_chart(runs, path=tmp_path / "cost.png")
    lines = figure.axes[0].lines
    assert [line.get_label() for line in lines] == ["kd", "ed"]
    np.testing.assert_array_equal(lines[1].get_xdata(), [0.2, 0.5, 1.5])
    # Grade boundaries at epochs 1 and 2: marks after epochs 1 and 2.
    np.testing.assert_array_equal(figure.axes[0].collections[0].get_offsets(), [[0.2, 0.3], [0.5, 0.4]])
    assert (tmp_path / "cost.png").stat().st_size > 0
    with pytest.raises(ValueError, match="same non-zero length"):
        visualize.cost_chart({"kd": {"train_cost": [1.0], "top1": [0.5, 0.6]}})
