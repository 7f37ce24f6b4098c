"""The recipes' shared functions under one name, for tests and your scripts.

The recipes import the module of each concern directly:

| module | holds |
|---|---|
| `cli` | `RecipeError`, `--config`/`--quick` resolution, entry points, output paths, JSON, tables |
| `data_loading` | the data flags, `load_data` -> `Data`, `fit` inputs, `parse_partition` |
| `architectures` | `check_arch`, `build_model` (zoo names and `cnn<W>`), `load_model`, `check_input_shape` |
| `training` | the training flags, `TrainSettings`, the schedule, `fit_plain`, `TestEvaluator` |

This module re-exports their public names (and the one private helper the
tests call), so `common.load_data(...)` and `common.RecipeError` keep
working.
"""

from architectures import build_model
from architectures import check_arch
from architectures import check_input_shape
from architectures import load_model
from cli import QUICK
from cli import RecipeError
from cli import apply_overrides
from cli import check_output_path
from cli import entry_points
from cli import format_groups
from cli import int_list
from cli import launch
from cli import print_table
from cli import remove_path
from cli import resolve_flags
from cli import run_facts
from cli import write_json
from data_loading import AUGMENTATIONS
from data_loading import MEMORY_BUDGET_BYTES
from data_loading import Data
from data_loading import _looks_like_path  # Called by tests/test_recipes.py.
from data_loading import data_from_flags
from data_loading import define_data_flags
from data_loading import fit_inputs
from data_loading import holdout_split
from data_loading import load_data
from data_loading import materialize
from data_loading import parse_image_size
from data_loading import parse_partition
from data_loading import pipeline
from data_loading import train_images
from data_loading import unbatched_inputs
from training import EpochTimer
from training import TestEvaluator
from training import TrainSettings
from training import define_training_flags
from training import enable_compilation_cache
from training import fit_plain
from training import learning_rate_at
from training import make_optimizer
from training import schedule_callbacks
from training import settings_from_flags
from training import top1_scores

__all__ = [
    "AUGMENTATIONS",
    "MEMORY_BUDGET_BYTES",
    "QUICK",
    "Data",
    "EpochTimer",
    "RecipeError",
    "TestEvaluator",
    "TrainSettings",
    "apply_overrides",
    "build_model",
    "check_arch",
    "check_input_shape",
    "check_output_path",
    "data_from_flags",
    "define_data_flags",
    "define_training_flags",
    "enable_compilation_cache",
    "entry_points",
    "fit_inputs",
    "fit_plain",
    "format_groups",
    "holdout_split",
    "int_list",
    "launch",
    "learning_rate_at",
    "load_data",
    "load_model",
    "make_optimizer",
    "materialize",
    "parse_image_size",
    "parse_partition",
    "pipeline",
    "print_table",
    "remove_path",
    "resolve_flags",
    "run_facts",
    "schedule_callbacks",
    "settings_from_flags",
    "top1_scores",
    "train_images",
    "unbatched_inputs",
    "write_json",
]
