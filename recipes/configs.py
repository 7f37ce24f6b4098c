"""Named recipes: `--config=NAME` sets the defaults of the flags it lists.

Keys are flag names of `train_teacher.py` and `distill.py`, plus
`teacher` / `teacher_epochs` (read by `train_teacher.py` as `--arch` and
`--epochs`). Flags given on the command line override a config.

The CIFAR-100 schedules are the standard protocol of the distillation
literature (CRD, mdistiller) and of the education-distillation reference
code: 240 epochs, SGD with learning rate 0.05, momentum 0.9, weight decay
5e-4, batch 64, the learning rate x0.1 at epochs 150, 180 and 210, alpha
0.3, temperature 4; grades 2 and 3 start at epochs 150 and 180.

The Food-101 and Caltech-256 configs scale that schedule to 120 epochs
(grades at 75 and 90, decays at 75, 90 and 105) on 64x64 images; they have
not been tuned.
"""

import difflib


def _schedule(epochs, batch_size, lr, lr_decay_epochs, boundaries):
    """The settings every config shares, around its own schedule.

    SGD with momentum 0.9 and weight decay 5e-4, the learning rate x0.1 at
    `lr_decay_epochs` (`--lr_schedule=step`, for every method), three
    class groups whose grades 2 and 3 start at `boundaries`, alpha 0.3
    and temperature 4; teachers train as long as students. Epoch lists are strings, as the list flags hold them.
    """
    return {
        "partition": "1:1:1",
        "epochs": epochs,
        "teacher_epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_decay_epochs": [str(e) for e in lr_decay_epochs],
        "lr_decay_factor": 0.1,
        # The reference's step decays, for ED too (distill.py's default
        # for ED is the per-grade cosine, which takes no decay epochs).
        "lr_schedule": "step",
        "boundaries": [str(b) for b in boundaries],
        "alpha": 0.3,
        "temperature": 4.0,
    }


_CIFAR100 = {
    "dataset": "cifar100",
    "augment": "cifar",
    # epochs, batch size, learning rate, its decays, grade boundaries.
    **_schedule(240, 64, 0.05, (150, 180, 210), (150, 180)),
}

_LARGE_IMAGES = {
    "image_size": "64",
    "augment": "resize_crop",
    **_schedule(120, 128, 0.1, (75, 90, 105), (75, 90)),
}

CONFIGS = {
    "cifar100_resnet110_resnet20": {
        **_CIFAR100,
        "teacher": "resnet110",
        "student": "resnet20",
    },
    "cifar100_wrn40_2_wrn16_2": {
        **_CIFAR100,
        "teacher": "wrn_40_2",
        "student": "wrn_16_2",
    },
    # TFDS `food101`: 75,750 training and 25,250 validation images (the
    # validation split is the test split), resized to 64x64.
    "food101_resnet32x4_resnet8x4": {
        **_LARGE_IMAGES,
        "dataset": "food101",
        "teacher": "resnet32x4",
        "student": "resnet8x4",
    },
    # Caltech-256 is not in TFDS: pass its `256_ObjectCategories` folder as
    # --dataset; 20% of each class is held out as the test split.
    "caltech256_resnet32x4_resnet8x4": {
        **_LARGE_IMAGES,
        "dataset": "",
        "test_fraction": 0.2,
        "teacher": "resnet32x4",
        "student": "resnet8x4",
    },
}


def names():
    """The config names, sorted."""
    return sorted(CONFIGS)


def get(name):
    """The settings of config `name` (a copy).

    Raises:
        ValueError: For an unknown name; the message lists the valid ones.
    """
    if name not in CONFIGS:
        close = difflib.get_close_matches(str(name), names(), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown --config={name}.{hint} Valid configs: "
            f"{', '.join(names())}."
        )
    return dict(CONFIGS[name])
