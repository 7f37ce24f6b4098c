"""keras_edu.visualize charts and the PerGroupAccuracy callback."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_edu
from keras_edu import visualize
from keras_edu.per_group_accuracy import PerGroupAccuracy

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history(epochs=6, groups=3):
    rng = np.random.default_rng(0)
    history = {
        f"val_group_{k + 1}_accuracy": rng.uniform(0, 1, epochs).tolist()
        for k in range(groups)
    }
    history["grade"] = [1, 1, 2, 2, 3, 3][:epochs]
    history["loss"] = [1.0] * epochs
    return history


def _boundary_positions(axes):
    """x positions of the dashed grade boundaries (a LineCollection)."""
    xs = []
    for collection in axes.collections:
        for segment in collection.get_segments():
            xs.append(float(segment[0][0]))
    return sorted(xs)


def _assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE


# ---------------------------------------------------------- curriculum_chart


def test_curriculum_chart_from_history_dict(tmp_path):
    history = _history()
    path = tmp_path / "charts" / "curriculum.png"  # parent is created
    figure = visualize.curriculum_chart(history, path=str(path))
    (axes,) = figure.axes
    assert len(axes.lines) == 3
    np.testing.assert_allclose(axes.lines[1].get_ydata(), history["val_group_2_accuracy"])
    np.testing.assert_array_equal(axes.lines[0].get_xdata(), np.arange(1, 7))
    # Grades 2 and 3 start at epochs 2 and 4 (0-based): between the points
    # drawn at x = 2, 3 and x = 4, 5.
    assert _boundary_positions(axes) == [2.5, 4.5]
    assert [t.get_text() for t in axes.texts] == ["grade 1", "grade 2", "grade 3"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "group 1", "group 2", "group 3"
    ]
    _assert_png(path)


def test_curriculum_chart_from_keras_history():
    callback = keras.callbacks.History()
    callback.history = _history(groups=2)
    figure = visualize.curriculum_chart(callback, group_names=["a", "b"])
    assert len(figure.axes[0].lines) == 2
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["a", "b"]


def test_curriculum_chart_from_results_json(tmp_path):
    results = {
        "per_group_top1_by_epoch": [[0.5, 0.0], [0.6, 0.0], [0.7, 0.4], [0.8, 0.6]],
        "boundaries": [2],
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    for source in (results, str(path), path):
        axes = visualize.curriculum_chart(source).axes[0]
        assert len(axes.lines) == 2
        np.testing.assert_allclose(axes.lines[1].get_ydata(), [0.0, 0.0, 0.4, 0.6])
        assert _boundary_positions(axes) == [2.5]


def test_curriculum_chart_infers_boundaries_from_grade_by_epoch():
    results = {
        "per_group_top1_by_epoch": [[0.5, 0.0], [0.6, 0.0], [0.7, 0.4]],
        "grade_by_epoch": [1, 2, 2],
    }
    assert _boundary_positions(visualize.curriculum_chart(results).axes[0]) == [1.5]


def test_curriculum_chart_explicit_boundaries_win():
    history = _history()
    axes = visualize.curriculum_chart(history, boundaries=[3]).axes[0]
    assert _boundary_positions(axes) == [3.5]
    axes = visualize.curriculum_chart(history, boundaries=[]).axes[0]
    assert _boundary_positions(axes) == []
    assert len(axes.texts) == 0


def test_curriculum_chart_without_grades_draws_no_boundaries():
    history = {"val_group_1_accuracy": [0.1, 0.2], "val_group_2_accuracy": [0.3, 0.4]}
    axes = visualize.curriculum_chart(history).axes[0]
    assert len(axes.lines) == 2
    assert _boundary_positions(axes) == []


def test_curriculum_chart_draws_missing_values_as_gaps():
    # recipes/distill.py writes None for a group without test examples.
    results = {"per_group_top1_by_epoch": [[0.5, None], [0.6, 0.2]]}
    line = visualize.curriculum_chart(results).axes[0].lines[1]
    assert np.isnan(line.get_ydata()[0])


def test_curriculum_chart_percentages_use_a_100_axis():
    results = {"per_group_top1_by_epoch": [[55.0, 0.0], [70.0, 40.0]]}
    assert visualize.curriculum_chart(results).axes[0].get_ylim() == (0.0, 100.0)


@pytest.mark.parametrize(
    "source, match",
    [
        ({"loss": [1.0], "val_accuracy": [0.5]}, "no per-group accuracy"),
        (
            {"val_group_1_accuracy": [0.1, 0.2], "val_group_2_accuracy": [0.3]},
            "one value per epoch",
        ),
        (
            {"val_group_1_accuracy": [0.1], "val_group_3_accuracy": [0.3]},
            r"missing k = \[2\]",
        ),
        ({"per_group_top1_by_epoch": [[0.1, 0.2], [0.3]]}, "same number of groups"),
        ({"per_group_top1_by_epoch": []}, "non-empty"),
        ([[0.1, 0.2]], "must be a keras.callbacks.History"),
    ],
)
def test_curriculum_chart_rejects_bad_sources(source, match):
    with pytest.raises(ValueError, match=match):
        visualize.curriculum_chart(source)


def test_curriculum_chart_rejects_bad_arguments(tmp_path):
    history = _history()
    with pytest.raises(ValueError, match="`boundaries` must be strictly increasing"):
        visualize.curriculum_chart(history, boundaries=[4, 2])
    with pytest.raises(ValueError, match=r"in \[1, 6\)"):
        visualize.curriculum_chart(history, boundaries=[6])
    with pytest.raises(ValueError, match="integer epochs"):
        visualize.curriculum_chart(history, boundaries=[1.5])
    with pytest.raises(ValueError, match="boundaries \\(from `source`\\)"):
        visualize.curriculum_chart({"per_group_top1_by_epoch": [[0.1]], "boundaries": [3]})
    with pytest.raises(ValueError, match="`group_names` must have 3 names"):
        visualize.curriculum_chart(history, group_names=["a", "b"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        visualize.curriculum_chart(str(bad))


# ------------------------------------------------------ teacher_weight_chart


def test_teacher_weight_chart_bars(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=300)
    weights = rng.dirichlet([1.0, 1.0, 1.0], size=300)
    path = tmp_path / "weights.png"
    figure = visualize.teacher_weight_chart(
        weights, labels, teacher_names=["a", "b", "c"], path=path
    )
    axes = figure.axes[0]
    assert len(axes.containers) == 3  # one per teacher
    for k, container in enumerate(axes.containers):
        assert len(container.patches) == 5  # one bar per class
        heights = [bar.get_height() for bar in container.patches]
        expected = [weights[labels == c, k].mean() for c in range(5)]
        np.testing.assert_allclose(heights, expected)
    # The uniform reference line at 1/K.
    (uniform,) = axes.lines
    np.testing.assert_allclose(uniform.get_ydata(), [1 / 3, 1 / 3])
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    _assert_png(path)


def test_teacher_weight_chart_heatmap_and_empty_class():
    weights = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    labels = np.array([[0], [0], [2]])  # (N, 1); class 1 has no example
    figure = visualize.teacher_weight_chart(
        weights, labels, class_names=["x", "y", "z"], kind="heatmap"
    )
    (image,) = figure.axes[0].images
    grid = np.asarray(image.get_array(), dtype="float64")
    assert grid.shape == (2, 3)  # teachers x classes
    np.testing.assert_allclose(grid[:, 0], [0.8, 0.2])
    assert np.isnan(grid[:, 1]).all()
    np.testing.assert_allclose(grid[:, 2], [0.2, 0.8])
    assert len(figure.axes) == 2  # the image and its colour bar


def test_teacher_weight_chart_takes_backend_tensors():
    weights = keras.ops.softmax(keras.ops.ones((4, 2)))
    labels = keras.ops.convert_to_tensor(np.array([0, 1, 1, 0]))
    figure = visualize.teacher_weight_chart(weights, labels)
    heights = [bar.get_height() for bar in figure.axes[0].containers[0].patches]
    np.testing.assert_allclose(heights, [0.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=np.ones((4, 2)), labels=np.zeros(3, "int32")), "one row per example"),
        (dict(weights=np.ones(4), labels=np.zeros(4, "int32")), r"shape \(N, K\)"),
        (dict(weights=np.ones((4, 2)), labels=np.array([0.5, 1, 0, 0])), "integer class ids"),
        (dict(weights=np.ones((4, 2)), labels=np.array([0, -1, 0, 0])), ">= 0"),
        (
            dict(weights=np.ones((4, 2)), labels=np.array([0, 1, 2, 0]), class_names=["a", "b"]),
            "names only 2 classes",
        ),
        (
            dict(weights=np.ones((4, 2)), labels=np.zeros(4, "int32"), teacher_names=["t"]),
            "`teacher_names` must have 2 names",
        ),
        (dict(weights=np.ones((4, 2)), labels=np.zeros(4, "int32"), kind="pie"), "`kind`"),
    ],
)
def test_teacher_weight_chart_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        visualize.teacher_weight_chart(**kwargs)


# ------------------------------------------------------- PerGroupAccuracy


def test_per_group_accuracy_values_on_a_plain_model():
    partition = keras_edu.ClassPartition.from_groups([[0, 3], [1, 2]])
    # A linear model whose logits are the inputs: its prediction is argmax(x).
    model = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    x = np.eye(4, dtype="float32")[[0, 1, 2, 3, 3, 2]]
    y = np.array([0, 1, 1, 3, 0, 2])  # correct: yes, yes, no, yes, no, yes
    values = PerGroupAccuracy(x, y, partition).compute(model)
    # Group 1 = classes {0, 3}: rows 0, 3, 4 -> 2/3; group 2: rows 1, 2, 5.
    assert values == pytest.approx({"val_group_1_accuracy": 2 / 3, "val_group_2_accuracy": 2 / 3})


def test_per_group_accuracy_with_education_distillation(tmp_path):
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")

    def stage(filters):
        return keras.Sequential([keras.layers.Conv2D(filters, 3, padding="same"), keras.layers.ReLU()])

    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(6)])
    student = keras_edu.GradedStudent(
        [stage(4), stage(4), stage(4)], head, partition, input_shape=(6, 6, 1)
    )
    teachers = [
        keras_edu.Teacher(
            keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(len(g))]),
            classes=g,
        )
        for g in partition.groups
    ]
    distiller = keras_edu.Distiller(student, teachers)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    x = np.random.default_rng(0).random((36, 6, 6, 1)).astype("float32")
    y = np.repeat(np.arange(6), 6)
    history = distiller.fit(
        x, y, epochs=3, batch_size=12, verbose=0,
        callbacks=[keras_edu.GradeCallback(boundaries=[1, 2]), PerGroupAccuracy(x, y, partition)],
    )
    logged = history.history
    assert logged["grade"] == [1, 2, 3]
    # Groups the head cannot predict yet are all errors.
    assert logged["val_group_2_accuracy"][0] == 0.0
    assert logged["val_group_3_accuracy"][:2] == [0.0, 0.0]
    # At the last grade the three groups average to the overall accuracy.
    final = PerGroupAccuracy(x, y, partition).compute(distiller)
    overall = np.mean(np.argmax(distiller.predict(x, verbose=0), -1) == y)
    assert np.mean(list(final.values())) == pytest.approx(overall)
    axes = visualize.curriculum_chart(history, path=tmp_path / "c.png").axes[0]
    assert len(axes.lines) == 3
    assert _boundary_positions(axes) == [1.5, 2.5]


def test_per_group_accuracy_rejects_bad_input():
    partition = keras_edu.ClassPartition.contiguous(4, "1:1")
    x = np.zeros((3, 4), "float32")
    with pytest.raises(ValueError, match="`y` must hold integer class ids"):
        PerGroupAccuracy(x, np.array([0.5, 1.0, 2.0]), partition)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        PerGroupAccuracy(x, np.array([0, 1, 4]), partition)
    with pytest.raises(ValueError, match="same length"):
        PerGroupAccuracy(x, np.array([0, 1]), partition)
    with pytest.raises(ValueError, match="`partition` must be"):
        PerGroupAccuracy(x, np.array([0, 1, 2]), [[0, 1], [1, 2]])
    wide = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="outputs 5 values"):
        PerGroupAccuracy(x, np.array([0, 1, 2]), partition).compute(wide)


def test_charts_leave_pyplot_alone():
    pyplot = pytest.importorskip("matplotlib.pyplot")
    before = pyplot.get_fignums()
    visualize.curriculum_chart(_history())
    visualize.teacher_weight_chart(np.ones((2, 2)) / 2, np.array([0, 1]))
    assert pyplot.get_fignums() == before  # no figure registered with pyplot


def test_visualize_imports_without_matplotlib():
    # Keras imports matplotlib when it is installed, so hide it instead: the
    # module must import, and only a chart call asks for matplotlib.
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "import keras_edu.visualize\n"
        "try:\n"
        "    keras_edu.visualize.curriculum_chart({'val_group_1_accuracy': [0.5]})\n"
        "except ImportError as error:\n"
        "    assert 'pip install matplotlib' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, env=env, cwd=root, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
