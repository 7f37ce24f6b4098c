"""End-to-end tests of the recipes on tiny offline data (every backend).

The recipes run in-process through their `run(argv)` entry points: tiny
Fashion-MNIST IDX files written to a temporary folder, TFDS through
`tfds.testing.mock_data`, and a generated JPEG folder. Models are
`cnn4` (a 3-conv CNN with 4, 8, 16 channels) so that each run takes
seconds.
"""

import json
import math
import os
import subprocess
import sys

from absl import flags
import keras
import keras_edu
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
Image = pytest.importorskip("PIL.Image")

import helpers  # noqa: E402

RECIPES = helpers.recipes_on_path()

import cli  # noqa: E402
import configs  # noqa: E402
import data_loading  # noqa: E402
import distill  # noqa: E402
import fashion_mnist  # noqa: E402
import train_teacher  # noqa: E402
import training  # noqa: E402

FAST = ["--batch_size=32", "--verbose=0", "--weight_decay=0"]


# ---------------------------------------------------------------- data


def tiny_fashion_mnist(folder, train=120, test=60):
    """Learnable fake Fashion-MNIST: class c lights up row band c."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label + 4 : 2 * label + 7, :] = 250
        helpers.save_idx(
            os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images
        )
        helpers.save_idx(
            os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels
        )
    return str(folder)


def jpeg_folder(root, classes=3, per_class=6, size=(20, 24)):
    for c in range(classes):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(per_class):
            pixels = np.full((*size, 3), 70 * c + i, np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"img_{i}.jpg")
    return root


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return tiny_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def job(fmnist, tmp_path_factory):
    """The main job with --quick on tiny data: 4 teachers, 3 students."""
    out = tmp_path_factory.mktemp("job")
    report = fashion_mnist.run(
        [
            "--quick",
            f"--data_dir={fmnist}",
            f"--out_dir={out}",
            "--teacher=cnn4",
            "--student=cnn4",
            "--export=",
            "--verbose=0",
        ]
    )
    return {"out": out, "report": report}


@pytest.fixture(scope="module")
def teachers(job):
    folder = job["out"] / "teachers_seed0"
    return {
        "full": str(folder / "teacher_full.keras"),
        "groups": [str(folder / f"teacher_group{k}.keras") for k in (1, 2, 3)],
        "manifest": str(folder / "specialists.json"),
    }


def distill_args(fmnist, tmp_path, method, *extra):
    return [
        f"--method={method}",
        f"--data_dir={fmnist}",
        "--student=cnn4",
        "--epochs=3",
        "--boundaries=1,2",
        f"--results={tmp_path / method}.json",
        *FAST,
        *extra,
    ]


def check_results(saved, method, test_examples):
    for key in (
        "method",
        "dataset",
        "backend",
        "keras_version",
        "seed",
        "epochs",
        "top1_last",
        "top1_best",
        "per_group_top1",
        "per_group_top1_by_epoch",
        "per_group_top1_at_boundaries",
        "boundaries",
        "epoch_seconds",
        "student_params",
        "student_path",
    ):
        assert key in saved, key
    assert saved["method"] == method
    assert saved["backend"] == keras.backend.backend()
    assert saved["epochs"] == 3 and len(saved["epoch_seconds"]) == 3
    assert saved["boundaries"] == [1, 2]
    by_epoch = saved["per_group_top1_by_epoch"]
    assert len(by_epoch) == 3 and all(len(groups) == 3 for groups in by_epoch)
    assert saved["per_group_top1"] == by_epoch[-1]
    assert saved["per_group_top1_at_boundaries"] == [
        {"epoch": 1, "per_group_top1": by_epoch[0]},
        {"epoch": 2, "per_group_top1": by_epoch[1]},
    ]
    assert saved["top1_last"] == saved["top1_by_epoch"][-1]
    assert saved["top1_best"] == max(saved["top1_by_epoch"])
    assert saved["test_examples"] == test_examples
    student = keras.saving.load_model(saved["student_path"], compile=False)
    assert student.output_shape[-1] == 10
    assert student.count_params() == saved["student_params"]
    if method in distill.GRADED_METHODS:
        assert saved["grade_by_epoch"] == [1, 2, 3]
        # Grade 1 predicts only group 1: the other groups score 0.
        assert by_epoch[0][1:] == [0.0, 0.0]
        classes = [t["classes"] for t in saved["teachers"]]
        assert classes[:3] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
        # The main job's ED also learns from the full teacher (4th).
        full = classes[3:] == [list(range(10))]
        assert full or len(classes) == 3
        assert saved["education_routing"] == (
            {"generalists_teach": "seen", "specialists_until_grade": 2}
            if full
            else {}
        )
    else:
        assert saved["education_routing"] == {}
        assert saved["grade_by_epoch"] is None


# ------------------------------------------------------------- recipes


def test_fashion_mnist_main_job_quick(job, fmnist):
    report, out = job["report"], job["out"]
    assert [s["method"] for s in report["students"]] == ["scratch", "kd", "ed"]
    assert [t["kind"] for t in report["teachers"]] == ["full"] + [
        "specialist"
    ] * 3
    with open(out / "results_seed0.json") as f:
        assert json.load(f)["students"][2]["method"] == "ed"
    assert os.path.isfile(out / "student_ed_seed0.keras")
    with pytest.raises(cli.RecipeError, match="--overwrite"):
        fashion_mnist.run(
            [f"--data_dir={fmnist}", f"--out_dir={out}", "--quick"]
        )


@pytest.mark.parametrize(
    "boundaries, match",
    [
        ("0.5,2", "every value as a fraction of --epochs"),
        ("2,1", "--boundaries=2,1"),
    ],
)
def test_fashion_mnist_boundaries_are_checked_before_training(
    fmnist, tmp_path, boundaries, match
):
    # Epochs or fractions, resolved and refused by keras_edu.GradeCallback
    # as in recipes/distill.py, before any teacher trains.
    with pytest.raises(cli.RecipeError, match=match):
        fashion_mnist.run([
            "--quick", f"--data_dir={fmnist}", f"--out_dir={tmp_path / 'out'}",
            f"--boundaries={boundaries}", "--verbose=0",
        ])


@pytest.mark.parametrize("method", ["scratch", "kd", "ed"])
def test_main_job_students_have_every_field(job, method):
    with open(job["out"] / f"student_{method}_seed0.json") as f:
        check_results(json.load(f), method, test_examples=60)


def test_specialist_manifest(teachers):
    with open(teachers["manifest"]) as f:
        manifest = json.load(f)
    assert manifest["partition"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert manifest["backend"] == keras.backend.backend()
    entries = manifest["teachers"]
    assert [e["classes"] for e in entries] == manifest["partition"]
    assert all(
        e["kind"] == "specialist" and 0 <= e["top1"] <= 1 for e in entries
    )
    # Local labels: a specialist has one logit per class of its group.
    model = keras.saving.load_model(teachers["groups"][2], compile=False)
    assert model.output_shape == (None, 4)


# scratch, kd and ed run end to end in the main job above; `distill.run`
# trains on an image folder below, and the other methods here, so that
# every --method writes its results JSON in the default run (5-25 s each
# on JAX).
@pytest.mark.parametrize("method", ["aver", "amtml", "ed_amtml"])
def test_distill_cli_end_to_end(fmnist, teachers, tmp_path, method):
    full = teachers["full"]
    teacher_flag = (
        teachers["manifest"] if method == "ed_amtml" else f"{full},{full}"
    )
    result = distill.run(
        distill_args(fmnist, tmp_path, method, f"--teachers={teacher_flag}")
    )
    with open(tmp_path / f"{method}.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    check_results(saved, method, test_examples=60)
    # The charts lie next to the student file, as PNGs.
    expected = {"curriculum"} | ({"teacher_weights"} if method == "amtml" else set())
    assert set(saved["charts"]) == expected
    for path in saved["charts"].values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tfds_teacher(tmp_path_factory):
    """train_teacher.py on TFDS `cifar10` mock data (32x32x3)."""
    out = tmp_path_factory.mktemp("tfds_teacher")
    with tfds.testing.mock_data(num_examples=40):
        manifest = train_teacher.run(
            [
                "--dataset=cifar10",
                "--arch=cnn4",
                "--epochs=1",
                f"--out_dir={out}",
                *FAST,
            ]
        )
    return manifest


def test_train_teacher_on_tfds_mock_data(tfds_teacher):
    assert tfds_teacher["dataset"] == "cifar10"
    assert tfds_teacher["preprocessing"]["image_shape"] == [32, 32, 3]
    (entry,) = tfds_teacher["teachers"]
    assert entry["kind"] == "full" and entry["classes"] == list(range(10))
    assert entry["test_examples"] == 40 and os.path.isfile(entry["path"])


def test_distill_on_image_folder(tmp_path):
    root = jpeg_folder(tmp_path / "images")
    result = distill.run(
        [
            f"--dataset={root}",
            "--image_size=16",
            "--method=scratch",
            "--student=cnn4",
            "--epochs=1",
            "--partition=1:1:1",
            f"--results={tmp_path / 'folder.json'}",
            *FAST,
        ]
    )
    assert result["preprocessing"]["image_shape"] == [16, 16, 3]
    # 20% of each class of 6 images is held out: 1 each.
    assert result["test_examples"] == 3 and result["train_examples"] == 15
    assert result["partition"] == [[0], [1], [2]]


# ------------------------------------------------------------ bad input


def test_unknown_dataset_lists_close_matches(tmp_path):
    with pytest.raises(cli.RecipeError, match="Did you mean: .*cifar100"):
        distill.run(
            distill_args("x", tmp_path, "scratch", "--dataset=cifar1000")
        )


def test_folder_without_class_subfolders(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a.jpg")
    with pytest.raises(cli.RecipeError, match="no class sub-folders"):
        distill.run(distill_args("x", tmp_path, "scratch", f"--dataset={root}"))


def test_unreadable_image_is_named(tmp_path):
    root = jpeg_folder(tmp_path / "images")
    bad = root / "class_1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(cli.RecipeError, match="broken.jpg"):
        distill.run(distill_args("x", tmp_path, "scratch", f"--dataset={root}"))


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(
        cli.RecipeError, match="apt-get install dataset-fashion-mnist"
    ):
        distill.run(distill_args(tmp_path / "empty", tmp_path, "scratch"))


def test_teacher_input_shape_must_match_the_data(
    fmnist, tfds_teacher, tmp_path
):
    teacher = tfds_teacher["teachers"][0]["path"]  # Trained on 32x32x3.
    with pytest.raises(
        cli.RecipeError,
        match=r"shape \(32, 32, 3\), but --dataset=fashion_mnist gives \(28, 28, 1\)",
    ):
        distill.run(
            distill_args(fmnist, tmp_path, "kd", f"--teachers={teacher}")
        )


def test_ratios_that_do_not_fit_the_classes(fmnist, tmp_path):
    with pytest.raises(cli.RecipeError, match="--partition=.*10 classes"):
        distill.run(
            distill_args(
                fmnist,
                tmp_path,
                "scratch",
                "--partition=" + ":".join(["1"] * 11),
            )
        )


def test_specialist_whose_size_does_not_match_its_group(
    fmnist, teachers, tmp_path
):
    # Group 3 (4 classes) listed first, where group 1 (3 classes) belongs.
    g1, g2, g3 = teachers["groups"]
    with pytest.raises(
        cli.RecipeError, match="has 4 logits, but it teaches group 1"
    ):
        distill.run(
            distill_args(fmnist, tmp_path, "ed", f"--teachers={g3},{g2},{g1}")
        )


def test_kd_refuses_a_specialist(fmnist, teachers, tmp_path):
    with pytest.raises(cli.RecipeError, match="needs full teachers"):
        distill.run(
            distill_args(
                fmnist, tmp_path, "kd", f"--teachers={teachers['groups'][0]}"
            )
        )


@pytest.mark.parametrize("method", ["scratch", "kd"])
def test_a_diverging_run_stops_with_the_term_named_and_saves_nothing(
    fmnist, teachers, tmp_path, method
):
    args = distill_args(
        fmnist, tmp_path, method, f"--teachers={teachers['full']}", "--lr=1e30"
    )
    with pytest.raises(cli.RecipeError, match="Training stopped at a non-finite loss") as error:
        distill.run(args)
    if method == "kd":
        # A diverging student: its own term, not the teacher's, is named.
        assert "student_loss" in str(error.value)
        assert "Teacher 0" not in str(error.value)
    assert not os.path.exists(tmp_path / f"{method}.json")
    assert not os.path.exists(tmp_path / f"{method}.keras")


def test_ed_boundaries_must_fit_grades_and_epochs(fmnist, teachers, tmp_path):
    args = distill_args(
        fmnist, tmp_path, "ed", f"--teachers={teachers['manifest']}"
    )
    with pytest.raises(cli.RecipeError, match="needs 2 --boundaries"):
        distill.run(args + ["--boundaries=1"])
    with pytest.raises(cli.RecipeError, match="< --epochs=3"):
        distill.run(args + ["--boundaries=1,3"])


def test_distillation_terms_are_checked_before_loading_data(tmp_path):
    # "x" is no Fashion-MNIST folder: the checks must come first.
    with pytest.raises(
        cli.RecipeError, match=r"--alpha must be in \[0, 1\]"
    ):
        distill.run(distill_args("x", tmp_path, "kd", "--alpha=1.5"))
    with pytest.raises(cli.RecipeError, match="--temperature must be > 0"):
        distill.run(distill_args("x", tmp_path, "kd", "--temperature=0"))


def test_tfds_names_with_a_slash_are_not_folders(tmp_path):
    assert not data_loading._looks_like_path("imagenette/320px-v2")
    assert data_loading._looks_like_path(str(tmp_path))
    assert data_loading._looks_like_path("./no/such/folder")


def test_unknown_method_and_config_list_valid_ones(tmp_path):
    with pytest.raises(
        flags.IllegalFlagValueError, match="scratch.*kd.*aver.*ed_amtml"
    ):
        distill.run(["--method=hinton"])
    with pytest.raises(
        flags.IllegalFlagValueError, match="cifar100_resnet110_resnet20"
    ):
        distill.run(["--method=kd", "--config=cifar100_resnet56"])
    with pytest.raises(
        ValueError, match="Valid configs: .*cifar100_wrn40_2_wrn16_2"
    ):
        configs.get("cifar100_resnet56")


def test_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "scratch.json").write_text("{}")
    with pytest.raises(cli.RecipeError, match="already exists.*--overwrite"):
        distill.run(distill_args("x", tmp_path, "scratch"))


def test_overwrite_replaces_existing_outputs(fmnist, tmp_path):
    (tmp_path / "scratch.json").write_text("{}")
    (tmp_path / "scratch.keras").write_text("an older student")
    result = distill.run(
        distill_args(fmnist, tmp_path, "scratch", "--overwrite")
    )
    with open(tmp_path / "scratch.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    check_results(saved, "scratch", test_examples=60)


def test_cli_prints_one_line_errors(tmp_path):
    (tmp_path / "out.json").write_text("{}")
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(RECIPES, "distill.py"),
            "--method=scratch",
            f"--results={tmp_path / 'out.json'}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 1
    assert (
        process.stderr.strip().splitlines()[-1].startswith("Error: The output")
    )
    assert "Traceback" not in process.stderr


# -------------------------------------------------------------- configs


def _parsed(*argv):
    flag_values = flags.FlagValues()
    distill.define_flags(flag_values)
    flag_values(["distill.py", *argv])
    cli.resolve_flags(flag_values, configs, {})
    return flag_values


@pytest.mark.parametrize(
    "name, teacher, student",
    [
        ("cifar100_resnet110_resnet20", "resnet110", "resnet20"),
        ("cifar100_wrn40_2_wrn16_2", "wrn_40_2", "wrn_16_2"),
    ],
)
def test_cifar100_configs(name, teacher, student):
    values = _parsed(f"--config={name}", "--method=ed")
    assert values.dataset == "cifar100" and values.student == student
    assert configs.get(name)["teacher"] == teacher
    assert (values.epochs, values.batch_size, values.momentum) == (240, 64, 0.9)
    assert (values.weight_decay, values.alpha, values.temperature) == (
        5e-4,
        0.3,
        4.0,
    )
    assert values.boundaries == ["150", "180"]
    # The reference's step decays, not ED's default per-grade cosine.
    assert values.lr_schedule == "step"
    settings = training.settings_from_flags(values)
    rates = [
        training.learning_rate_at(settings, e)
        for e in (0, 149, 150, 180, 210, 239)
    ]
    np.testing.assert_allclose(rates, [0.05, 0.05, 0.005, 5e-4, 5e-5, 5e-5])


def test_flags_beat_configs_and_quick():
    values = _parsed(
        "--config=cifar100_resnet110_resnet20",
        "--method=kd",
        "--epochs=10",
        "--quick",
    )
    assert values.epochs == 10  # Given explicitly.
    assert (
        values.boundaries == ["1", "2"] and values.lr_decay_epochs == []
    )  # --quick
    assert values.lr == 0.05  # From the config.


def test_large_image_configs():
    assert set(configs.names()) >= {
        "food101_resnet32x4_resnet8x4",
        "caltech256_resnet32x4_resnet8x4",
    }
    assert (
        _parsed(
            "--config=food101_resnet32x4_resnet8x4", "--method=kd"
        ).image_size
        == "64"
    )
    with pytest.raises(cli.RecipeError, match="pass --dataset=FOLDER"):
        _parsed("--config=caltech256_resnet32x4_resnet8x4", "--method=kd")


def test_compilation_cache_keeps_jax_executables(tmp_path, caplog):
    cache = tmp_path / "xla"
    assert training.enable_compilation_cache("") is False
    if keras.backend.backend() != "jax":
        with caplog.at_level("WARNING"):
            assert training.enable_compilation_cache(str(cache)) is False
        assert "for the JAX backend" in caplog.text
        assert not cache.exists()
        return
    import jax

    previous = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    try:
        assert training.enable_compilation_cache(str(cache)) is True
        assert jax.config.jax_compilation_cache_dir == str(cache)
        # Cache even this tiny executable (the default keeps those > 1 s).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.jit(lambda a: a * 3.0 + 1.0)(np.arange(7.0)).block_until_ready()
        assert any(cache.iterdir()), "no executable was written to the cache"
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs", previous[1]
        )
        # Later tests must not write into this test's temporary folder.
        from jax._src import compilation_cache

        compilation_cache.reset_cache()


def _teacher(classes):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(len(classes))])
    return keras_edu.Teacher(model, classes=classes), {}


@pytest.mark.parametrize(
    "method, with_full, overrides, expected",
    [
        ("ed", True, {}, {"generalists_teach": "seen", "specialists_until_grade": 2}),
        ("ed", True, {"retire_specialists": False}, {"generalists_teach": "seen"}),
        ("ed", True, {"generalists_teach": "group"}, {"generalists_teach": "group"}),
        ("ed", False, {}, {}),
        ("ed_amtml", True, {}, {}),
    ],
)
def test_ed_routes_a_full_teacher_over_the_seen_classes_and_retires_the_specialists(
    method, with_full, overrides, expected
):
    partition = keras_edu.ClassPartition.contiguous(6, "1:1:1")
    teachers = [_teacher(group) for group in partition.groups]
    if with_full:
        teachers.append(_teacher(list(range(6))))
    options = distill.DistillOptions(
        method=method, student="cnn4", partition=partition, **overrides
    )
    options.teachers = teachers
    assert distill.education_routing(options) == expected


# ------------------------------- boundaries, learning rate, devices, dtypes


def test_fraction_boundaries_resolve_and_the_per_grade_cosine_restarts(
    fmnist, teachers, tmp_path
):
    # ED's default learning rate restarts its cosine at every grade.
    args = distill_args(
        fmnist, tmp_path, "ed", f"--teachers={teachers['manifest']}"
    )
    result = distill.run(args + ["--epochs=4", "--boundaries=0.5,0.75"])
    with open(tmp_path / "ed.json") as f:
        assert json.load(f) == json.loads(json.dumps(result))
    # floor(0.5 * 4 + 0.5) = 2, floor(0.75 * 4 + 0.5) = 3.
    assert result["boundaries"] == [2, 3]
    assert result["boundaries_flag"] == [0.5, 0.75]
    assert result["grade_by_epoch"] == [1, 1, 2, 3]
    assert result["lr_schedule"] == "per_grade"
    steps = result["lr_grade_steps"]
    assert len(steps) == 3 and all(n > 0 for n in steps)
    # Epoch 2 starts half-way through grade 1's cosine: 0.05 * (1 + cos(pi / 2)) / 2.
    # Grades 2 and 3 start at the peak again.
    np.testing.assert_allclose(
        result["lr_by_epoch"], [0.05, 0.025, 0.05, 0.05], rtol=1e-5
    )


def test_per_grade_optimizer_has_a_per_grade_cosine():
    settings = training.TrainSettings(lr=0.1)
    per_grade = training.make_optimizer(settings, "per_grade")
    schedule = keras_edu.schedules.per_grade_schedule(per_grade)
    assert isinstance(schedule, keras_edu.schedules.PerGradeCosineDecay)
    assert schedule.initial_learning_rate == 0.1
    # GradeCallback sizes it when fit starts.
    assert schedule.grade_steps is None
    step = training.make_optimizer(settings, "step")
    assert keras_edu.schedules.per_grade_schedule(step) is None
    assert float(step.learning_rate) == pytest.approx(0.1)


def test_lr_schedule_defaults():
    assert distill.default_lr_schedule("ed") == "per_grade"
    assert distill.default_lr_schedule("ed_amtml") == "per_grade"
    assert distill.default_lr_schedule("kd") == "step"
    assert _parsed("--method=ed").lr_schedule is None  # Resolved in body.


def test_bad_boundaries_and_lr_schedules_name_the_flag_before_loading_data(
    tmp_path,
):
    # "x" is no Fashion-MNIST folder: the checks must come first.
    def fails(method, *flags_, match):
        with pytest.raises(cli.RecipeError, match=match):
            distill.run(distill_args("x", tmp_path, method, *flags_))

    fails(
        "ed",
        "--boundaries=1,0.5",
        match=r"--boundaries=1,0.5: .*every value as an epoch .*fraction",
    )
    fails("ed", "--boundaries=one,two", match="--boundaries must be a comma")
    fails(
        "ed",
        "--boundaries=0.1,0.2",
        match=r"--boundaries=0.1,0.2: .*the epochs \[0, 1\] in a run of 3",
    )
    fails(
        "kd",
        "--lr_schedule=per_grade",
        match="--lr_schedule=per_grade .* --method=kd has no grades",
    )
    fails(
        "ed",
        "--lr_decay_epochs=2",
        match="--lr_decay_epochs=2 .* Pass --lr_schedule=step",
    )


def test_mixed_bfloat16_run_is_finite_and_restores_the_policy(
    fmnist, teachers, tmp_path
):
    args = distill_args(
        fmnist, tmp_path, "ed", f"--teachers={teachers['manifest']}"
    )
    result = distill.run(args + ["--mixed_precision=mixed_bfloat16"])
    assert keras.mixed_precision.global_policy().name == "float32"
    assert result["mixed_precision"] == "mixed_bfloat16"
    assert len(result["loss_by_epoch"]) == 3
    assert all(math.isfinite(loss) for loss in result["loss_by_epoch"])
    # The student computed in bfloat16 (and keeps that policy when saved).
    student = keras.saving.load_model(result["student_path"], compile=False)
    assert keras.backend.standardize_dtype(student.output.dtype) == "bfloat16"
    # A run that fails inside the policy restores it too.
    with pytest.raises(cli.RecipeError, match="no such file"):
        distill.run(
            distill_args(
                fmnist,
                tmp_path,
                "kd",
                "--teachers=missing.keras",
                "--mixed_precision=mixed_float16",
            )
        )
    assert keras.mixed_precision.global_policy().name == "float32"


def test_data_parallel_on_the_local_devices(fmnist, teachers, tmp_path):
    args = distill_args(
        fmnist,
        tmp_path,
        "ed",
        f"--teachers={teachers['manifest']}",
        "--distribution=data_parallel",
    )
    if keras.backend.backend() == "torch":
        with pytest.raises(
            cli.RecipeError,
            match="PyTorch trainer has no multi-device `fit`.*KERAS_BACKEND=jax",
        ):
            distill.run(args)
        assert not os.path.exists(tmp_path / "ed.json")
        return
    result = distill.run(args)
    assert result["distribution"] == "data_parallel"
    assert result["devices"] >= 1
    assert result["grade_by_epoch"] == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in result["loss_by_epoch"])
    # The distribution does not outlive the run.
    assert keras.distribution.distribution() is None
    assert not tf.distribute.has_strategy()


# Two devices need a fresh process: JAX and TensorFlow fix their devices
# when they start, and the rest of the suite keeps one.
_TWO_DEVICES = """
import json, sys
import keras
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
import cli, distill
try:
    result = distill.run(sys.argv[2:])
    print(json.dumps({"devices": result["devices"],
                      "grades": result["grade_by_epoch"]}))
except cli.RecipeError as error:
    print(json.dumps({"error": str(error)}))
"""


def test_data_parallel_on_two_devices(fmnist, teachers, tmp_path):
    backend = keras.backend.backend()
    if backend == "torch":
        pytest.skip("PyTorch refuses --distribution=data_parallel (above).")
    args = distill_args(
        fmnist,
        tmp_path,
        "ed",
        f"--teachers={teachers['manifest']}",
        "--distribution=data_parallel",
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    process = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES, RECIPES, *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    if backend == "jax":
        # ED grows its student on a 2-device mesh.
        assert report == {"devices": 2, "grades": [1, 2, 3]}
    else:
        # keras_edu refuses ED under several replicas; the recipe says so
        # in terms of its flags, before training.
        assert "2 replicas" in report["error"]
        assert "--distribution=none" in report["error"]
        assert not os.path.exists(tmp_path / "ed.json")
