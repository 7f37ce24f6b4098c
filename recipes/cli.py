"""Command-line plumbing shared by the recipes: errors, flags, outputs.

The recipes (`train_teacher.py`, `distill.py`, `export.py`,
`fashion_mnist.py`) are scripts, but each also exposes its work as plain
functions so that the others (and the tests) can call them in-process. To
let one process import several recipes, no recipe defines absl flags at
import time: each has a `define_flags(flag_values)` function, called on
`flags.FLAGS` when the script runs (`launch`) and on a fresh
`flags.FlagValues` by `run(argv)` in tests (`entry_points`).

The other shared modules hold one concern each: `data_loading` (the data
set and `fit` inputs), `architectures` (models), `training` (optimisation
and evaluation).
"""

import json
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import keras

import keras_edu


class RecipeError(ValueError):
    """Bad input to a recipe. The message names the flag and the fix."""


# ------------------------------------------------------- flags and runs


# What `--quick` sets, unless the flag was given on the command line.
QUICK = {
    "train_size": 2000,
    "test_size": 1000,
    "epochs": 3,
    "boundaries": ["1", "2"],
    "lr_decay_epochs": [],
}


def apply_overrides(flag_values, values, source):
    """Sets the flags in `values` that were not given on the command line."""
    for name, value in values.items():
        if name not in flag_values:
            continue
        if not flag_values[name].present:
            try:
                flag_values[name].value = value
            except flags.IllegalFlagValueError as error:
                raise RecipeError(f"{source} sets --{name}={value!r}: {error}")


def resolve_flags(flag_values, configs, config_keys):
    """Applies `--config`, then `--quick`, to the flags not given explicitly.

    Args:
        flag_values: The parsed `FlagValues`.
        configs: The `recipes.configs` module.
        config_keys: Maps a flag name to the config key it reads (e.g.
            `{"arch": "teacher", "epochs": "teacher_epochs"}`); other flags
            read the key of the same name.
    """
    if flag_values.config:
        config = configs.get(flag_values.config)
        values = {}
        for name in flag_values:
            key = config_keys.get(name, name)
            if key in config and name != "config":
                values[name] = config[key]
        if config.get("dataset") == "" and not flag_values["dataset"].present:
            raise RecipeError(
                f"--config={flag_values.config} has no data set of its own: "
                "pass --dataset=FOLDER, e.g. the extracted "
                "`256_ObjectCategories` folder of Caltech-256."
            )
        apply_overrides(flag_values, values, f"--config={flag_values.config}")
    if flag_values.quick:
        apply_overrides(flag_values, QUICK, "--quick")


def entry_points(define_flags, body):
    """`main(argv)` for `app.run` and `run(argv)` for tests.

    `main` turns a `RecipeError` into a one-line message and exit status 1;
    `run` parses `argv` (a list of `--flag=value` strings) into a fresh
    `FlagValues` and lets errors propagate.
    """

    def main(argv):
        if not flags.FLAGS["verbosity"].present:
            # TensorFlow logs through absl; keep its INFO lines out of the
            # recipe's output unless --verbosity asks for them.
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            raise app.UsageError(
                f"Unexpected arguments {argv[1:]}: every input is a "
                "`--flag=value`."
            )
        try:
            body(flags.FLAGS)
        except RecipeError as error:
            sys.exit(f"Error: {error}")

    def run(argv=()):
        flag_values = flags.FlagValues()
        define_flags(flag_values)
        flag_values([sys.argv[0]] + list(argv))
        return body(flag_values)

    return main, run


def launch(define_flags, main):
    """Runs a recipe as a script: its flags on `flags.FLAGS`, then `main`.

    The flags are defined here, not at import time, so that importing a
    recipe for its functions leaves `flags.FLAGS` alone.
    """
    define_flags(flags.FLAGS)
    app.run(main)


def int_list(values, flag, minimum=None):
    """`["150", "180"]` -> `[150, 180]`, naming `--flag` on bad input."""
    try:
        numbers = [int(v) for v in values if str(v).strip() != ""]
    except ValueError:
        raise RecipeError(
            f"--{flag} must be a comma-separated list of integers, e.g. "
            f"`--{flag}=150,180`. Received: {','.join(map(str, values))}."
        ) from None
    if minimum is not None and any(n < minimum for n in numbers):
        raise RecipeError(
            f"--{flag} values must be >= {minimum}. Received: {numbers}."
        )
    return numbers


def number_list(values, flag):
    """`["150", "0.75"]` -> `[150, 0.75]`: integers stay ints, the rest floats.

    For flags whose values are either epochs or fractions of the run: what
    the values mean is left to the caller (e.g. `keras_edu.GradeCallback`).
    """
    numbers = []
    for value in values:
        text = str(value).strip()
        if not text:
            continue
        try:
            numbers.append(int(text))
        except ValueError:
            try:
                numbers.append(float(text))
            except ValueError:
                raise RecipeError(
                    f"--{flag} must be a comma-separated list of numbers, "
                    f"e.g. `--{flag}=150,180` or `--{flag}=0.625,0.75`. "
                    f"Received: {','.join(map(str, values))}."
                ) from None
    return numbers


def check_output_path(path, overwrite, flag):
    """Refuses an existing output unless `--overwrite`; makes its folder."""
    if not path:
        raise RecipeError(f"--{flag} must name an output path.")
    if os.path.exists(path) and not overwrite:
        raise RecipeError(
            f"The output {path} (from --{flag}) already exists. Pass "
            f"--overwrite to replace it, or choose another --{flag}."
        )
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return path


def remove_path(path):
    """Deletes a file or folder (used before replacing an output)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def write_json(path, report):
    """Writes `report` as indented JSON, ending with a newline."""
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def run_facts(seed):
    """The fields every result JSON starts with."""
    return {
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "keras_edu_version": keras_edu.__version__,
        "seed": seed,
    }


# --------------------------------------------------------------- tables


def print_table(rows, columns, title=None, file=None):
    """Prints `rows` (dicts) as an aligned text table.

    Args:
        rows: Dicts holding the values.
        columns: `(header, key, format)` triples; `key` may be a callable
            of the row.
    """
    file = file or sys.stdout
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = key(row) if callable(key) else row.get(key)
            line.append("-" if value is None else format(value, fmt))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    if title:
        print(f"\n{title}", file=file)
    for index, line in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if column == 0 else c.rjust(w)
                for column, (c, w) in enumerate(zip(line, widths))
            ),
            file=file,
        )
        if index == 0:
            print("  ".join("-" * w for w in widths), file=file)


def format_groups(values):
    """Per-group scores as `0.912 / 0.887 / -` (`-`: a group without data)."""
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)
