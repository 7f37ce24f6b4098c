"""Shared pytest fixtures. Keep each fixture small and clearly named."""

import keras
import pytest


@pytest.fixture(autouse=True)
def edu_seed():
    """Seeds Python, NumPy and the backend before every test."""
    keras.utils.set_random_seed(1337)
    yield


@pytest.fixture
def edu_mixed_bfloat16_policy():
    """Runs a test under the "mixed_bfloat16" policy, then restores float32."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
