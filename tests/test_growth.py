"""Grade-switch options: fractional boundaries, per-grade schedules, growth inits."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_edu
from keras_edu.schedules import PerGradeCosineDecay

PARTITION = keras_edu.ClassPartition.contiguous(6, "1:1:1")


def _resnet_student(depth=14):
    # Two blocks per stage: a projection block then an identity block.
    model = keras_edu.models.cifar_resnet(
        depth, [4, 4, 8, 8], num_classes=6, input_shape=(8, 8, 1)
    )
    return keras_edu.GradedStudent.from_model(
        model, ["stage1_out", "stage2_out", "stage3_out"], PARTITION
    )


def _specialists(input_shape=(8, 8, 1)):
    teachers = []
    for group in PARTITION.groups:
        model = keras.Sequential(
            [keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(len(group))]
        )
        teachers.append(keras_edu.Teacher(model, classes=group))
    return teachers


def _data(per_class=8):
    rng = np.random.default_rng(0)
    x = rng.random((6 * per_class, 8, 8, 1)).astype("float32")
    return x, np.repeat(np.arange(6), per_class).astype("int32")


# --------------------------------------------------------------- zero-init growth


def test_zero_init_finds_the_residual_branch_of_every_block():
    model = keras_edu.models.resnet20(num_classes=10, input_shape=(28, 28, 1))
    zeroed = keras_edu.growth.zero_init_residual_branches(model)
    assert zeroed == [
        f"stage{s}_block{b}_bn2" for s in (1, 2, 3) for b in (1, 2, 3)
    ]
    for name in zeroed:
        np.testing.assert_array_equal(ops.convert_to_numpy(model.get_layer(name).gamma), 0.0)
    # Shortcut projections and the other BatchNorms keep gamma = 1.
    for name in ("stage2_block1_shortcut_bn", "stage2_block1_bn1", "stem_bn"):
        np.testing.assert_array_equal(ops.convert_to_numpy(model.get_layer(name).gamma), 1.0)


def test_zero_init_leaves_layers_without_residual_blocks_alone():
    plain = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    assert keras_edu.growth.zero_init_residual_branches(plain) == []
    np.testing.assert_array_equal(ops.convert_to_numpy(plain.layers[1].gamma), 1.0)


def test_zero_init_growth_starts_the_new_stage_as_its_shortcut():
    graded = _resnet_student()
    distiller = keras_edu.Distiller(graded, _specialists())
    distiller.set_grade(2, zero_init_residual=True)
    stage2 = graded.stages[1]
    x = np.random.default_rng(1).random((4, 8, 8, 1)).astype("float32")
    features = graded.stages[0](x, training=False)
    # The first block's shortcut: 1x1 strided projection + BatchNorm.
    conv = stage2.get_layer("stage2_block1_shortcut_conv")
    bn = stage2.get_layer("stage2_block1_shortcut_bn")
    shortcut = ops.relu(bn(conv(features), training=False))
    np.testing.assert_allclose(
        ops.convert_to_numpy(stage2(features, training=False)),
        ops.convert_to_numpy(shortcut),
        atol=1e-6,
    )
    # The stage that had trained in grade 1 is untouched.
    gamma = graded.stages[0].get_layer("stage1_block1_bn2").gamma
    np.testing.assert_array_equal(ops.convert_to_numpy(gamma), 1.0)


def test_copy_seen_class_rows_copies_the_old_classifier_columns():
    graded = _resnet_student()
    old, new = graded._heads()[0], graded._heads()[1]
    for block, grade in ((old, 1), (new, 2)):
        block.build(graded._stage_shapes[grade - 1])
    copied = keras_edu.growth.copy_seen_class_rows(
        old, new, graded.classes_for_grade(1), graded.classes_for_grade(2)
    )
    assert copied
    old_kernel = ops.convert_to_numpy(old.dense.kernel)
    new_kernel = ops.convert_to_numpy(new.dense.kernel)
    np.testing.assert_array_equal(new_kernel[:, :2], old_kernel)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(new.dense.bias)[:2], ops.convert_to_numpy(old.dense.bias)
    )
    assert not np.allclose(new_kernel[:, 2:], 0.0)  # new classes keep their init


# --------------------------------------------------------------- PerGradeCosineDecay


def _cosine(peak, progress, alpha=0.0):
    return peak * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_per_grade_cosine_restarts_at_every_grade():
    schedule = PerGradeCosineDecay(
        0.1, grade_steps=[100, 20, 40], warmup_steps=5, alpha=0.1, grade_decay=0.5
    )
    expected = {
        0: 0.1 * 1 / 5,  # warm-up, step 1 of 5
        4: 0.1,  # end of the warm-up
        52: _cosine(0.1, 47 / 95, 0.1),
        100: 0.05 / 5,  # grade 2 starts again, at half the peak
        110: _cosine(0.05, 5 / 15, 0.1),
        120: 0.025 / 5,  # grade 3
        159: _cosine(0.025, 34 / 35, 0.1),
        500: 0.025 * 0.1,  # after the last grade: its final rate
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step


def test_per_grade_cosine_round_trips_through_keras_serialization():
    schedule = PerGradeCosineDecay(0.2, grade_steps=[3, 4], warmup_steps=1, alpha=0.05)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, PerGradeCosineDecay)
    assert restored.get_config() == schedule.get_config()
    for step in range(8):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(initial_learning_rate=0.0), "initial_learning_rate"),
        (dict(grade_steps=[10, 0]), "grade_steps"),
        (dict(grade_steps=[]), "grade_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(alpha=1.5), "alpha"),
        (dict(grade_decay=float("nan")), "grade_decay"),
    ],
)
def test_per_grade_cosine_rejects_bad_arguments(kwargs, match):
    kwargs = {"initial_learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        PerGradeCosineDecay(**kwargs)


def test_per_grade_cosine_without_steps_says_how_to_get_them():
    with pytest.raises(ValueError, match="GradeCallback"):
        PerGradeCosineDecay(0.1)(0)


class _LearningRateAtEpochBegin(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(float(ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_grade_callback_sizes_the_per_grade_schedule_and_it_restarts():
    distiller = keras_edu.Distiller(_resnet_student(), _specialists())
    schedule = PerGradeCosineDecay(0.05)
    distiller.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    x, y = _data(per_class=8)  # 16 samples per group
    recorder = _LearningRateAtEpochBegin()
    grades = keras_edu.GradeCallback(boundaries=[0.5, 0.75], seed=0)
    history = distiller.fit(
        x, y, epochs=4, batch_size=8, verbose=0, callbacks=[grades, recorder]
    )
    assert grades.epoch_boundaries == [2, 3]
    assert history.history["grade"] == [1, 1, 2, 3]
    # Stratified batches of 8: 2, 4 and 6 steps per epoch at grades 1-3.
    assert schedule.grade_steps == [2 * 2, 1 * 4, 1 * 6]
    assert recorder.rates[0] == pytest.approx(0.05)
    assert recorder.rates[1] == pytest.approx(_cosine(0.05, 2 / 4))
    assert recorder.rates[2] == pytest.approx(0.05)  # restarted for grade 2
    assert recorder.rates[3] == pytest.approx(0.05)  # and for grade 3
    assert int(distiller.optimizer.iterations) == 4 + 4 + 6


def test_grade_callback_warns_when_the_schedule_was_sized_for_another_run(caplog):
    distiller = keras_edu.Distiller(_resnet_student(), _specialists())
    distiller.compile(optimizer=keras.optimizers.SGD(PerGradeCosineDecay(0.05, [1, 1, 1])))
    x, y = _data(per_class=8)
    with caplog.at_level("WARNING", logger="keras_edu"):
        distiller.fit(
            x, y, epochs=3, batch_size=8, verbose=0,
            callbacks=[keras_edu.GradeCallback(boundaries=[1, 2])],
        )
    assert "will not restart" in caplog.text


# --------------------------------------------------------------- GradeCallback options


def test_fractional_boundaries_resolve_against_the_run():
    callback = keras_edu.GradeCallback(boundaries=[0.625, 0.75])
    with pytest.raises(ValueError, match="known once `fit` starts"):
        callback.grade_at(0)
    distiller = keras_edu.Distiller(_resnet_student(), _specialists())
    callback.validate(distiller, 240)
    assert callback.epoch_boundaries == [150, 180]
    assert [callback.grade_at(e) for e in (0, 149, 150, 179, 180, 239)] == [1, 1, 2, 2, 3, 3]
    assert callback.boundaries_for(24) == [15, 18]
    with pytest.raises(ValueError, match="at least one epoch"):
        callback.validate(distiller, 3)  # 0.625 * 3 and 0.75 * 3 both give 2


@pytest.mark.parametrize(
    "boundaries", [[0.5, 2], [0.0, 0.5], [0.5, 1.0], [True, 2], "0.5,0.7"]
)
def test_grade_callback_rejects_mixed_or_out_of_range_boundaries(boundaries):
    with pytest.raises(ValueError, match="fractions of the run in \\(0, 1\\)"):
        keras_edu.GradeCallback(boundaries=boundaries)


def test_faithful_is_the_reference_configuration():
    callback = keras_edu.GradeCallback.faithful([150, 180], seed=3)
    assert callback.order == "sequential"
    assert callback.optimizer_state == "reset"
    assert not callback.init_new_head_from_old and not callback.zero_init_residual
    assert callback.boundaries == [150, 180] and callback.seed == 3


def test_grade_callback_zero_inits_each_new_stage_during_fit():
    graded = _resnet_student()
    distiller = keras_edu.Distiller(graded, _specialists())
    distiller.compile(optimizer="sgd")
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            gamma = graded.stages[epoch].get_layer(f"stage{epoch + 1}_block2_bn2").gamma
            seen[epoch] = float(np.abs(ops.convert_to_numpy(gamma)).max())

    x, y = _data()
    distiller.fit(
        x, y, epochs=3, batch_size=8, verbose=0,
        callbacks=[keras_edu.GradeCallback([1, 2], zero_init_residual=True), Probe()],
    )
    # Stage 1 trains from its own init; stages 2 and 3 start at gamma = 0.
    assert seen == {0: 1.0, 1: 0.0, 2: 0.0}


# --------------------------------------------------------------- BatchNorm re-estimation


def test_reestimated_batchnorm_statistics_are_the_average_over_the_batches():
    rng = np.random.default_rng(2)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization()]
    )
    kernel_before = ops.convert_to_numpy(model.layers[0].kernel).copy()
    batches = [rng.normal(k, 1.0 + k, (5, 3)).astype("float32") for k in range(3)]
    assert keras_edu.growth.reestimate_batchnorm_statistics(model, batches) == 1
    bn = model.layers[1]
    hidden = [ops.convert_to_numpy(model.layers[0](b)) for b in batches]
    np.testing.assert_allclose(
        ops.convert_to_numpy(bn.moving_mean), np.mean([h.mean(0) for h in hidden], 0),
        rtol=1e-5, atol=1e-5,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(bn.moving_variance), np.mean([h.var(0) for h in hidden], 0),
        rtol=1e-4, atol=1e-5,
    )
    assert bn.momentum == 0.99  # restored
    np.testing.assert_array_equal(ops.convert_to_numpy(model.layers[0].kernel), kernel_before)


def test_reestimating_batchnorm_needs_a_batch():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="`batches` is empty"):
        keras_edu.growth.reestimate_batchnorm_statistics(model, [])
    assert model.layers[0].momentum == 0.99


def test_seen_group_inputs_hold_every_seen_group_in_proportion():
    y = np.repeat(np.arange(6), [10, 10, 5, 5, 20, 20])
    x = y.astype("float32").reshape(-1, 1)  # each input is its label
    data = keras_edu.CurriculumDataset(
        x, y, partition=PARTITION, batch_size=10, order="sequential", grade=2
    )
    batches = data.seen_group_inputs(25)
    # The third batch would need 21 of group 1's 20 rows this epoch.
    assert len(batches) == 2 and all(len(b) == 10 for b in batches)
    labels = np.concatenate(batches).ravel()
    assert set(labels) <= {0.0, 1.0, 2.0, 3.0}
    # Group 1 has 20 samples, group 2 has 10: rows 7 and 3 per batch.
    assert np.sum(labels < 2) == 14 and np.sum(labels >= 2) == 6


@pytest.mark.parametrize("samples", [0, 16])
def test_grade_callback_reestimates_batchnorm_right_after_a_switch(samples):
    graded = _resnet_student()
    distiller = keras_edu.Distiller(graded, _specialists())
    distiller.compile(optimizer="sgd")
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                bn = graded.stages[1].get_layer("stage2_block1_bn1")
                seen["mean"] = ops.convert_to_numpy(bn.moving_mean)
                seen["momentum"] = bn.momentum

    x, y = _data()
    callback = keras_edu.GradeCallback([1, 2], batchnorm_samples=samples)
    distiller.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback, Probe()])
    # The new stage's BatchNorm starts at mean 0; re-estimation moves it.
    assert np.abs(seen["mean"]).max() > 1e-3 if samples else np.all(seen["mean"] == 0)
    assert seen["momentum"] == 0.9  # the ResNets' BatchNorm momentum, restored


@pytest.mark.parametrize("samples", [-1, 2.5, True])
def test_grade_callback_rejects_bad_batchnorm_samples(samples):
    with pytest.raises(ValueError, match="batchnorm_samples"):
        keras_edu.GradeCallback([1, 2], batchnorm_samples=samples)


# --------------------------------------------------------------- generalists over seen classes


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(t, z, temperature):
    p, q = _softmax(t / temperature), _softmax(z / temperature)
    return temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def _generalist(input_shape=(8, 8, 1)):
    model = keras.Sequential(
        [keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(6)]
    )
    return keras_edu.Teacher(model, classes=list(range(6)))


@pytest.mark.parametrize("layout", ["one_group", "stratified"])
def test_generalist_teaches_every_seen_class_beside_the_specialists(layout):
    keras.utils.set_random_seed(5)
    teachers = _specialists() + [_generalist()]
    distiller = keras_edu.Distiller(
        _resnet_student(), teachers, generalists_teach="seen", alpha=0.3, temperature=4.0
    )
    distiller.set_grade(2)  # classes 0..3 seen
    x, y = _data(per_class=3)
    keep = y < 4
    x, y = x[keep], y[keep]
    if layout == "one_group":
        x, y = x[y >= 2], y[y >= 2]  # a batch of group 2 only
    else:
        distiller._rows_per_group = (6, 6)  # groups 1 and 2, in blocks
    logits = distiller.student(x, training=False)
    loss = distiller.compute_loss(x, ops.convert_to_tensor(y), logits, training=True)

    z = ops.convert_to_numpy(logits).astype("float64")
    cross_entropy = -np.log(_softmax(z))[np.arange(len(y)), y].mean()
    general = ops.convert_to_numpy(teachers[3].model(x)).astype("float64")[:, :4]
    kd = []
    for row, label in enumerate(y):
        group = label // 2
        t = ops.convert_to_numpy(teachers[group].model(x[row : row + 1])).astype("float64")
        columns = PARTITION.groups[group]
        specialist = _kl(t, z[row : row + 1, columns], 4.0)[0]
        seen = _kl(general[row : row + 1], z[row : row + 1], 4.0)[0]
        kd.append((specialist + seen) / 2)
    expected = 0.3 * cross_entropy + 0.7 * np.mean(kd)
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), expected, rtol=1e-5)


def test_generalists_teach_seen_by_default_and_serialize():
    teachers = _specialists() + [_generalist()]
    group = keras_edu.Distiller(_resnet_student(), teachers, generalists_teach="group")
    assert group._plan.shared_branches == []
    assert [k for k, _ in group._plan.group_branches[0].members] == [0, 3]
    # "auto" (the default) is "seen", the measured best, and retires the
    # specialists after the last grade but one; AMTML keeps "group".
    default = keras_edu.Distiller(_resnet_student(), teachers)
    assert default.generalists_teach == "seen"
    assert default.specialists_until_grade == 2
    assert group.specialists_until_grade is None
    specialists_only = keras_edu.Distiller(_resnet_student(), _specialists())
    assert specialists_only.specialists_until_grade is None
    amtml = keras_edu.Distiller(
        _resnet_student(), teachers, loss=keras_edu.losses.AMTML()
    )
    assert (amtml.generalists_teach, amtml.specialists_until_grade) == ("group", None)
    seen = keras_edu.Distiller(_resnet_student(), teachers, generalists_teach="seen")
    assert [k for k, _ in seen._plan.group_branches[0].members] == [0]
    seen.set_grade(3)
    assert [k for k, _ in seen._plan.shared_branches[0].members] == [3]
    assert seen.get_config()["generalists_teach"] == "seen"
    restored = keras_edu.Distiller.from_config(seen.get_config())
    assert restored.generalists_teach == "seen"


def test_generalists_teach_rejects_bad_values_and_amtml():
    teachers = _specialists() + [_generalist()]
    with pytest.raises(ValueError, match="generalists_teach"):
        keras_edu.Distiller(_resnet_student(), teachers, generalists_teach="all")
    with pytest.raises(ValueError, match="not supported with an AMTML"):
        keras_edu.Distiller(
            _resnet_student(), teachers, generalists_teach="seen",
            loss=keras_edu.losses.AMTML(),
        )


def test_generalist_over_seen_classes_trains_through_grade_switches():
    teachers = _specialists() + [_generalist()]
    distiller = keras_edu.Distiller(_resnet_student(), teachers, generalists_teach="seen")
    distiller.compile(optimizer="sgd")
    x, y = _data()
    history = distiller.fit(
        x, y, epochs=3, batch_size=8, verbose=0,
        callbacks=[keras_edu.GradeCallback([1, 2], seed=0)],
    )
    assert history.history["grade"] == [1, 2, 3]
    assert all(np.isfinite(history.history["distillation_loss"]))


# --------------------------------------------------------------- retiring the specialists


def test_retired_specialists_leave_the_generalists_term_alone():
    keras.utils.set_random_seed(5)
    teachers = _specialists() + [_generalist()]
    distiller = keras_edu.Distiller(
        _resnet_student(), teachers, generalists_teach="seen",
        specialists_until_grade=1, alpha=0.3, temperature=4.0,
    )
    assert [k for k, _ in distiller._plan.group_branches[0].members] == [0]
    distiller.set_grade(2)  # classes 0..3 seen, specialists retired
    assert [b.members for b in distiller._plan.group_branches] == [[], []]
    x, y = _data(per_class=3)
    x, y = x[y < 4], y[y < 4]
    distiller._rows_per_group = (6, 6)
    logits = distiller.student(x, training=False)
    loss = distiller.compute_loss(x, ops.convert_to_tensor(y), logits, training=True)

    z = ops.convert_to_numpy(logits).astype("float64")
    cross_entropy = -np.log(_softmax(z))[np.arange(len(y)), y].mean()
    general = ops.convert_to_numpy(teachers[3].model(x)).astype("float64")[:, :4]
    kd = _kl(general, z, 4.0).mean()  # the generalist alone, on every example
    expected = 0.3 * cross_entropy + 0.7 * kd
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), expected, rtol=1e-5)


def test_retired_specialists_hand_their_groups_to_a_group_generalist():
    teachers = _specialists() + [_generalist()]
    distiller = keras_edu.Distiller(
        _resnet_student(), teachers, generalists_teach="group",
        specialists_until_grade=2,
    )
    distiller.set_grade(2)
    assert [[k for k, _ in b.members] for b in distiller._plan.group_branches] == [
        [0, 3], [1, 3],
    ]
    distiller.set_grade(3)
    assert [[k for k, _ in b.members] for b in distiller._plan.group_branches] == [
        [3], [3], [3],
    ]
    restored = keras_edu.Distiller.from_config(distiller.get_config())
    assert restored.specialists_until_grade == 2


def test_retired_specialists_cost_one_teacher_pass_fewer():
    teachers = _specialists() + [_generalist()]
    x, y = _data()
    costs = {}
    for until in (None, 1):
        distiller = keras_edu.Distiller(
            _resnet_student(), teachers, generalists_teach="seen",
            specialists_until_grade=until,
        )
        distiller.compile(optimizer="sgd")
        cost = keras_edu.cost.TrainingCost(batch_size=8)
        history = distiller.fit(
            x, y, epochs=3, batch_size=8, verbose=0,
            callbacks=[keras_edu.GradeCallback([1, 2]), cost],
        )
        assert np.all(np.isfinite(history.history["distillation_loss"]))
        last_epoch = np.diff(history.history["train_cost"])[-1]
        costs[until] = last_epoch / (cost.params["steps"] * 8)
    # Grade 3: every example had its specialist's pass beside the generalist's.
    specialist = keras_edu.cost.forward_flops(teachers[0])
    np.testing.assert_allclose(costs[None] - costs[1], specialist, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"specialists_until_grade": 0}, "grade >= 1"),
        ({"specialists_until_grade": True}, "grade >= 1"),
        ({"specialists_until_grade": 1, "teachers": "specialists"}, "no teacher"),
        ({"specialists_until_grade": 1, "loss": "amtml"}, "AMTML"),
        ({"specialists_until_grade": 1, "student": "plain"}, "GradedStudent"),
    ],
)
def test_specialists_until_grade_rejects_what_cannot_work(kwargs, match):
    kwargs = dict(kwargs)
    teachers = _specialists()
    if kwargs.pop("teachers", None) is None:
        teachers = teachers + [_generalist()]
    student = _resnet_student()
    if kwargs.pop("student", None) == "plain":
        student, teachers = student.graduate(), [_generalist()]
    if kwargs.pop("loss", None) == "amtml":
        kwargs["loss"] = keras_edu.losses.AMTML()
    with pytest.raises(ValueError, match=match):
        keras_edu.Distiller(student, teachers, **kwargs)
