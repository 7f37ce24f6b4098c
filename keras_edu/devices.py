"""Where a Distiller's `fit` runs: replicas, processes, refused setups.

The backend-specific code of multi-device training, in one module (see
docs/distributed.md).
"""

import keras


def tf_replicas():
    """Replicas of the current `tf.distribute` strategy; 1 off TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def jax_process_share():
    """This process's place in a JAX multi-process run, for the curriculum.

    Each process feeds its share of every global batch
    (`CurriculumDataset(num_processes=..., process_index=...)`).
    """
    if keras.backend.backend() != "jax":
        return {}
    import jax

    return {"num_processes": jax.process_count(), "process_index": jax.process_index()}


def check_devices_are_supported(graded):
    """Refuses the multi-device setups `fit` would get wrong, before training."""
    if keras.backend.backend() == "torch" and keras.distribution.distribution():
        raise ValueError(
            "A keras.distribution is set "
            f"({keras.distribution.distribution()!r}), but Keras' PyTorch "
            "trainer runs `fit` on one device and would ignore it. Use the "
            "JAX backend for data-parallel distillation "
            "(docs/distributed.md), or call "
            "`keras.distribution.set_distribution(None)`."
        )
    if graded and tf_replicas() > 1:
        raise ValueError(
            "Education distillation (a GradedStudent) does not run under a "
            "tf.distribute strategy with several replicas: each replica would "
            "get a slice of the curriculum's batch, whose rows are laid out per "
            "class group for the whole batch. Use the JAX backend with "
            "keras.distribution.DataParallel (docs/distributed.md), or train "
            "outside the strategy's scope."
        )
