"""Charts of a distillation run: the curriculum and the teacher weights.

Both functions return a `matplotlib.figure.Figure` and save it when `path`
is given. They build the figure directly (no `pyplot`), so they work in
scripts, notebooks and headless jobs alike and leave matplotlib's global
state alone. matplotlib is imported on first use; keras_edu itself does not
need it (`pip install matplotlib`, or the `test` or `docs` extras).
"""

import json
import os
import re
from collections.abc import Mapping

import numpy as np

__all__ = ["cost_chart", "curriculum_chart", "teacher_weight_chart"]

# Per-group accuracy keys in a History, as `PerGroupAccuracy` logs them.
_GROUP_KEY = re.compile(r"^val_group_(\d+)_accuracy$")
# Key of a results JSON: a list over epochs of lists over groups.
_RESULTS_KEY = "per_group_top1_by_epoch"
_TEACHER_WEIGHT_KINDS = ("bars", "heatmap")


def curriculum_chart(source, boundaries=None, group_names=None, path=None):
    """Draws the validation accuracy of each class group over the epochs.

    One line per group of the curriculum, with the grades shaded and a
    dashed line where each grade starts. In education distillation group
    `k` joins the curriculum at grade `k`, so the chart shows when each
    group starts to be learned and whether earlier groups hold up once later
    ones arrive.

    `source` can be:

    - a `keras.callbacks.History` (what `fit` returns) or its `.history`
      dict, holding `val_group_1_accuracy`, `val_group_2_accuracy`, ... (one
      value per epoch, groups numbered from 1 like the grades). The
      `keras_edu.per_group_accuracy.PerGroupAccuracy` callback logs these
      keys; any callback or metric that logs them works too. When the
      History also holds `grade` (as `Distiller.fit` with a
      `keras_edu.GradeCallback` logs it), the boundaries are inferred from
      the epochs where the grade changes.
    - a results dict, or the path of a JSON file holding one, with
      `per_group_top1_by_epoch`: a list over epochs of lists over groups
      (`[[g1, g2, g3], ...]`, the accuracy of each group after each epoch),
      and optionally `boundaries` (the epochs at which grades 2, 3, ...
      start, as given to `GradeCallback`) or `grade_by_epoch` (the grade
      of each epoch). `recipes/distill.py` writes such a JSON.

    Accuracies are fractions in [0, 1] (percentages in [0, 100] also draw,
    on a 0-100 axis). NaN values (a group without validation examples) leave
    a gap.

    Args:
        source: A `keras.callbacks.History`, a history dict, a results dict
            or the path of a results JSON file, as above.
        boundaries: The epochs (0-based, as in `fit` and `GradeCallback`) at
            which grades 2, 3, ... start. `None` (default) takes them from
            `source` when it has them (`boundaries`, else where `grade` or
            `grade_by_epoch` changes) and otherwise draws no grades. `[]`
            draws none.
        group_names: Legend names of the groups, one per group. Defaults to
            `"group 1"`, `"group 2"`, ...
        path: Optional file to save the figure to; PNG unless the extension
            names another format matplotlib knows (`.svg`, `.pdf`). Missing
            parent folders are created.

    Returns:
        The `matplotlib.figure.Figure`. Its single axes holds one line per
        group (`figure.axes[0].lines`); epochs are numbered from 1 on the
        x axis, as Keras prints them.

    Example:

    ```python
    from keras_edu import visualize

    history = {  # e.g. `distiller.fit(...).history` with PerGroupAccuracy
        "grade": [1, 1, 2, 2, 3, 3],
        "val_group_1_accuracy": [0.61, 0.74, 0.78, 0.80, 0.81, 0.83],
        "val_group_2_accuracy": [0.0, 0.0, 0.55, 0.69, 0.73, 0.77],
        "val_group_3_accuracy": [0.0, 0.0, 0.0, 0.0, 0.52, 0.66],
    }
    figure = visualize.curriculum_chart(
        history,
        group_names=["primary", "middle", "university"],
        path="curriculum.png",
    )
    len(figure.axes[0].lines)  # 3, one per group; grades start at epochs 2, 4
    ```
    """
    table, found_boundaries = _read_curriculum(source)
    num_epochs, num_groups = table.shape
    if boundaries is None:
        boundaries = found_boundaries if found_boundaries is not None else []
        name = "boundaries (from `source`)"
    else:
        name = "boundaries"
    boundaries = _check_boundaries(boundaries, num_epochs, name)
    group_names = _check_names(group_names, num_groups, "group_names", "group")

    figure = _new_figure((7.0, 4.0))
    axes = figure.add_subplot()
    epochs = np.arange(1, num_epochs + 1)
    _draw_grades(axes, boundaries, num_epochs)
    for index in range(num_groups):
        axes.plot(epochs, table[:, index], marker="o", markersize=3,
                  label=group_names[index])
    percent = np.nanmax(table, initial=0.0) > 1.0
    axes.set_ylim(0.0, 100.0 if percent else 1.0)
    axes.set_xlim(0.5, num_epochs + 0.5)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation top-1 accuracy" + (" (%)" if percent else ""))
    axes.set_title("Accuracy per class group")
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)
    return figure


def teacher_weight_chart(
    weights, labels, teacher_names=None, class_names=None, path=None, kind="bars"
):
    """Draws the mean learned teacher weight of each class.

    With adaptive multi-teacher distillation each example gets its own
    weights over the K teachers (`keras_edu.layers.TeacherImportance`
    returns them, shape `(N, K)`). Averaging them per true class shows
    which teacher the student trusts for which classes; a dashed line marks
    the uniform weight `1 / K`, where training starts.

    Args:
        weights: Per-example teacher weights, shape `(N, K)`: a NumPy array
            or a backend tensor. Rows usually sum to 1.
        labels: The true class id of each example, integers of shape `(N,)`
            or `(N, 1)`.
        teacher_names: Names of the K teachers. Defaults to `"teacher 1"`,
            `"teacher 2"`, ...
        class_names: Names of the classes, in class id order; their number
            sets the number of classes. Defaults to the ids `0..max(labels)`.
            Classes without examples are drawn empty.
        path: Optional file to save the figure to (PNG unless the extension
            says otherwise). Missing parent folders are created.
        kind: `"bars"` (default): one group of K bars per class, one bar
            container per teacher in `figure.axes[0].containers`.
            `"heatmap"`: a teachers x classes image with a colour bar,
            clearer beyond ~20 classes.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:

    ```python
    import numpy as np
    from keras_edu import visualize

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    # Teacher 1 is trusted on classes 0-1, teacher 2 on classes 2-3.
    weights = np.where((labels < 2)[:, None], [0.8, 0.2], [0.3, 0.7])
    figure = visualize.teacher_weight_chart(
        weights, labels, teacher_names=["resnet56", "wrn_40_2"],
        class_names=["cat", "dog", "ship", "truck"], path="weights.png",
    )
    len(figure.axes[0].containers)  # 2, one group of 4 bars per teacher
    ```
    """
    weights = _to_numpy(weights, "weights").astype("float64")
    if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] == 0:
        raise ValueError(
            "`weights` must have shape (N, K): one weight per example and "
            f"teacher. Received: shape={weights.shape}."
        )
    labels = _to_numpy(labels, "labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not _is_integral(labels):
        raise ValueError(
            "`labels` must be integer class ids of shape (N,) or (N, 1). "
            f"Received: dtype={labels.dtype}, shape={labels.shape}. Pass "
            "sparse labels (e.g. `np.argmax(one_hot, -1)`)."
        )
    labels = labels.astype("int64")
    if len(labels) != len(weights):
        raise ValueError(
            "`weights` and `labels` must have one row per example. Received: "
            f"{len(weights)} weight rows and {len(labels)} labels."
        )
    if labels.min() < 0:
        raise ValueError(
            f"`labels` must be >= 0. Received: min(labels)={labels.min()}."
        )
    if kind not in _TEACHER_WEIGHT_KINDS:
        raise ValueError(
            f"`kind` must be one of {_TEACHER_WEIGHT_KINDS}. Received: kind={kind!r}."
        )
    num_teachers = weights.shape[1]
    if class_names is None:
        num_classes = int(labels.max()) + 1
        class_names = [str(c) for c in range(num_classes)]
    else:
        class_names = [str(n) for n in class_names]
        num_classes = len(class_names)
        if labels.max() >= num_classes:
            raise ValueError(
                f"`labels` holds class id {labels.max()}, but `class_names` "
                f"names only {num_classes} classes. Pass one name per class, "
                "in class id order."
            )
    teacher_names = _check_names(
        teacher_names, num_teachers, "teacher_names", "teacher"
    )

    # means[c, k]: the mean weight of teacher k over the examples of class c.
    means = np.full((num_classes, num_teachers), np.nan)
    for c in np.unique(labels):
        means[c] = weights[labels == c].mean(axis=0)

    width = max(6.0, min(16.0, 0.5 * num_classes * max(1, num_teachers) ** 0.5 + 2))
    figure = _new_figure((width, 4.0))
    axes = figure.add_subplot()
    positions = np.arange(num_classes)
    if kind == "bars":
        bar_width = 0.8 / num_teachers
        for k in range(num_teachers):
            offset = (k - (num_teachers - 1) / 2) * bar_width
            axes.bar(positions + offset, means[:, k], bar_width,
                     label=teacher_names[k])
        axes.axhline(1.0 / num_teachers, color="0.4", linestyle="--",
                     linewidth=1, label=f"uniform (1/{num_teachers})")
        axes.set_ylabel("mean teacher weight")
        axes.set_ylim(0.0, max(1.0 / num_teachers, np.nanmax(means, initial=0)) * 1.15)
        # Outside the axes: inside, the legend can cover a tall bar.
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        axes.set_xticks(positions, class_names,
                        rotation=45 if num_classes > 8 else 0,
                        ha="right" if num_classes > 8 else "center")
    else:
        top = max(1.0 / num_teachers, np.nanmax(means, initial=0))
        image = axes.imshow(means.T, aspect="auto", vmin=0.0, vmax=top,
                            cmap="viridis", interpolation="nearest")
        figure.colorbar(image, ax=axes, label="mean teacher weight")
        axes.set_yticks(np.arange(num_teachers), teacher_names)
        axes.set_xticks(positions, class_names,
                        rotation=45 if num_classes > 8 else 0,
                        ha="right" if num_classes > 8 else "center")
        if num_classes * num_teachers <= 120:
            # Small grids read better with the numbers written in.
            for (c, k), value in np.ndenumerate(means):
                if np.isfinite(value):
                    # viridis is light at the top: dark text there.
                    color = "black" if value > 0.6 * top else "white"
                    axes.text(c, k, f"{value:.2f}", ha="center", va="center",
                              fontsize="x-small", color=color)
    axes.set_xlabel("class")
    axes.set_title("Mean learned teacher weight per class")
    figure.tight_layout()
    _save(figure, path)
    return figure


def cost_chart(runs, path=None):
    """Draws test top-1 against cumulative training cost, one curve per method.

    The x axis is the training cost in FLOPs (the `train_cost` that
    `keras_edu.cost.TrainingCost` logs), so a method whose early epochs are
    cheap, as education distillation's grades are, is drawn at what it
    spent rather than at its epoch count. Grade boundaries are marked on
    the curves that have them.

    Args:
        runs: `{method name: run}`; a run is a dict with `train_cost` (the
            cumulative cost after each epoch), `top1` (the accuracy after
            each epoch, fractions or percentages) and optionally
            `boundaries` (the epochs, 0-based, at which grades 2, 3, ...
            start).
        path: Optional file to save the figure to, as in `curriculum_chart`.

    Returns:
        The `matplotlib.figure.Figure`; one line per method in
        `figure.axes[0].lines`.

    Example:

    ```python
    from keras_edu import visualize

    figure = visualize.cost_chart({
        "KD": {"train_cost": [4e12, 8e12, 12e12], "top1": [0.85, 0.88, 0.90]},
        "ED": {"train_cost": [1e12, 2e12, 6e12], "top1": [0.40, 0.55, 0.86],
               "boundaries": [1, 2]},
    }, path="cost.png")
    len(figure.axes[0].lines)  # 2
    ```
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(
            "`runs` must be a non-empty dict {method name: {'train_cost': [...], "
            f"'top1': [...]}}. Received: {type(runs).__name__}."
        )
    figure = _new_figure((7.0, 4.0))
    axes = figure.add_subplot()
    percent = False
    for name, run in runs.items():
        cost = np.asarray(run.get("train_cost", []), "float64")
        top1 = np.asarray(run.get("top1", []), "float64")
        if cost.ndim != 1 or cost.shape != top1.shape or not len(cost):
            raise ValueError(
                f"`runs[{name!r}]` needs `train_cost` and `top1` of the same "
                f"non-zero length, one value per epoch. Received lengths "
                f"{cost.size} and {top1.size}."
            )
        percent = percent or np.nanmax(top1) > 1.0
        (line,) = axes.plot(cost, top1, marker="o", markersize=3, label=name)
        marks = [b - 1 for b in run.get("boundaries") or [] if 0 < b <= len(cost)]
        if marks:
            # A scatter, not a line: `axes.lines` stays one per method.
            axes.scatter(cost[marks], top1[marks], marker="|", s=200,
                         color=line.get_color())
    axes.set_xscale("log")
    axes.set_xlabel("cumulative training cost (FLOPs, log scale)")
    axes.set_ylabel("test top-1 accuracy" + (" (%)" if percent else ""))
    axes.set_title("Accuracy against training cost (| = grade boundary)")
    axes.legend(loc="best", fontsize="small")
    axes.grid(alpha=0.3)
    _save(figure, path)
    return figure


def _new_figure(size):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "keras_edu.visualize needs matplotlib: `pip install matplotlib`."
        ) from error
    # A bare Figure has no pyplot manager: nothing global is touched and it
    # is garbage-collected like any object (no `plt.close` needed).
    return Figure(figsize=size)


def _save(figure, path):
    if path is None:
        return
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def _read_curriculum(source):
    """`(table (epochs, groups), boundaries or None)` from any `source`."""
    history = getattr(source, "history", None)
    if isinstance(history, Mapping):  # a keras.callbacks.History
        source = history
    elif isinstance(source, (str, os.PathLike)):
        with open(source) as f:
            try:
                source = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"`source` {os.fspath(source)!r} is not a JSON file: {error}."
                ) from None
    if not isinstance(source, Mapping):
        raise ValueError(
            "`source` must be a keras.callbacks.History, a history dict, a "
            "results dict or the path of a results JSON file. Received: "
            f"{type(source).__name__}."
        )
    boundaries = source.get("boundaries")
    for key in ("grade", "grade_by_epoch"):
        if boundaries is None and source.get(key) is not None:
            boundaries = _boundaries_from_grades(source[key])
    if _RESULTS_KEY in source:
        return _results_table(source[_RESULTS_KEY]), boundaries
    return _history_table(source), boundaries


def _results_table(rows):
    try:
        table = np.asarray(rows, dtype="float64")
    except (TypeError, ValueError):
        table = None
    if table is None or table.ndim != 2 or 0 in table.shape:
        raise ValueError(
            f"`{_RESULTS_KEY}` must be a non-empty list over epochs of lists "
            "over groups, every epoch with the same number of groups. "
            f"Received: {_abbreviate(rows)}."
        )
    return table


def _history_table(history):
    found = {}
    for key in history:
        match = _GROUP_KEY.match(str(key))
        if match:
            found[int(match.group(1))] = key
    if not found:
        raise ValueError(
            "`source` has no per-group accuracy: expected the keys "
            "'val_group_1_accuracy', 'val_group_2_accuracy', ... (a History) "
            f"or '{_RESULTS_KEY}' (a results dict). Received keys: "
            f"{sorted(map(str, history))}. Add "
            "`keras_edu.per_group_accuracy.PerGroupAccuracy(x_val, y_val, "
            "partition)` to the callbacks of `fit`."
        )
    expected = list(range(1, max(found) + 1))
    missing = [k for k in expected if k not in found]
    if missing:
        raise ValueError(
            "`source` must hold 'val_group_{k}_accuracy' for every group "
            f"k = 1..{max(found)}; missing k = {missing}."
        )
    columns = [np.asarray(history[found[k]], dtype="float64").reshape(-1) for k in expected]
    lengths = {found[k]: len(c) for k, c in zip(expected, columns)}
    if len(set(lengths.values())) != 1 or not columns[0].size:
        raise ValueError(
            "Every 'val_group_{k}_accuracy' in `source` must have one value "
            f"per epoch, the same number for every group. Received lengths: {lengths}."
        )
    return np.stack(columns, axis=1)


def _boundaries_from_grades(grades):
    grades = list(grades)
    return [e for e in range(1, len(grades)) if grades[e] != grades[e - 1]]


def _check_boundaries(boundaries, num_epochs, name):
    values = list(boundaries) if isinstance(boundaries, (list, tuple, np.ndarray)) else None
    if values is None or not all(isinstance(b, (int, np.integer)) for b in values):
        raise ValueError(
            f"`{name}` must be a list of integer epochs. Received: {boundaries!r}."
        )
    values = [int(b) for b in values]
    if any(b < 1 or b >= num_epochs for b in values) or any(
        b >= a for a, b in zip(values[1:], values[:-1])
    ):
        raise ValueError(
            f"`{name}` must be strictly increasing epochs in [1, {num_epochs}), "
            f"the run having {num_epochs} epochs (0-based, as given to "
            f"GradeCallback). Received: {values}."
        )
    return values


def _check_names(names, count, argument, default_prefix):
    if names is None:
        return [f"{default_prefix} {k + 1}" for k in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(
            f"`{argument}` must have {count} names, one per {default_prefix}. "
            f"Received {len(names)}: {names}."
        )
    return names


def _draw_grades(axes, boundaries, num_epochs):
    """Shades every other grade and marks where each grade starts."""
    if not boundaries:
        return
    # Grade g + 1 starts at 0-based epoch b, drawn at x = b + 1; the line
    # sits halfway between the last epoch of grade g and the first of g + 1.
    edges = [0.5] + [b + 0.5 for b in boundaries] + [num_epochs + 0.5]
    label_transform = axes.get_xaxis_transform()
    for grade, (start, end) in enumerate(zip(edges[:-1], edges[1:]), start=1):
        if grade % 2 == 0:
            axes.axvspan(start, end, color="0.92", zorder=0)
        axes.text((start + end) / 2, 0.98, f"grade {grade}", transform=label_transform,
                  ha="center", va="top", fontsize="small", color="0.35")
    # vlines, not axvline: the boundaries then stay out of `axes.lines`,
    # which holds exactly one line per group.
    axes.vlines(edges[1:-1], 0, 1, transform=label_transform, colors="0.35",
                linestyles="--", linewidth=1, zorder=1)


def _to_numpy(value, name):
    if isinstance(value, (np.ndarray, list, tuple)):
        return np.asarray(value)
    try:
        import keras

        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception as error:  # noqa: BLE001 - re-raised with the argument.
        raise ValueError(
            f"`{name}` must be an array or a tensor. Received: "
            f"{type(value).__name__} ({error})."
        ) from None


def _is_integral(values):
    if np.issubdtype(values.dtype, np.integer):
        return True
    return (
        np.issubdtype(values.dtype, np.floating)
        and bool(np.all(np.isfinite(values)))
        and bool(np.all(values == np.round(values)))
    )


def _abbreviate(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
