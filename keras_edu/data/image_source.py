"""`ImageSource`: an unbatched image classification dataset and its facts."""

import dataclasses
from typing import Any, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """An unbatched `tf.data.Dataset` of `(image, label)` and what it holds.

    Every source function (`from_arrays`, `from_tfds`, `from_directory`)
    returns one, and `split_by_groups` / `make_pipeline` accept one.

    Convention: each element is `(image, label)` where `image` is a **uint8**
    tensor of shape `(height, width, channels)` with raw pixel values in
    `[0, 255]` and `label` is an **int32** scalar in `[0, num_classes)`.
    uint8 keeps `dataset.cache()` four times smaller than float32; scaling
    and normalisation happen later, in `make_pipeline`.

    Attributes:
        dataset: The unbatched `tf.data.Dataset`.
        num_classes: Number of classes; labels lie in `[0, num_classes)`.
        class_names: Tuple of `num_classes` names, in label order.
        image_shape: `(height, width, channels)`; a dimension is `None`
            where images differ (e.g. TFDS `food101` before resizing).
        size: Number of examples, or `None` when unknown without reading
            the whole dataset.
        labels: The labels in dataset order as an int32 NumPy array when
            known without decoding images (`from_arrays`,
            `from_directory` and their `split_by_groups` groups), else
            `None`. Handy for class counts.

    Example:

    ```python
    import numpy as np
    from keras_edu.data import from_arrays

    source = from_arrays(
        np.zeros((6, 28, 28), "uint8"), np.array([0, 1, 2, 0, 1, 2])
    )
    source.num_classes  # 3
    source.image_shape  # (28, 28, 1)
    image, label = next(iter(source.dataset))
    ```
    """

    dataset: Any = dataclasses.field(compare=False)
    num_classes: int
    class_names: Tuple[str, ...]
    image_shape: Tuple[Optional[int], ...]
    size: Optional[int] = None
    labels: Optional[np.ndarray] = dataclasses.field(
        default=None, repr=False, compare=False
    )


def resolve_class_names(class_names, num_classes, labels=None):
    """Checks/infers `(num_classes, class_names)` for a source function."""
    if class_names is not None:
        class_names = tuple(str(name) for name in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"`num_classes`={num_classes} disagrees with the "
                f"{len(class_names)} `class_names`. Pass one of them, or "
                "make them agree."
            )
        num_classes = len(class_names)
    if num_classes is None:
        num_classes = (
            int(labels.max()) + 1 if labels is not None and labels.size else 0
        )
    if labels is not None and labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"Labels go up to {int(labels.max())} but there are only "
            f"{num_classes} classes. Pass `num_classes` (or `class_names`) "
            "covering every label."
        )
    if class_names is None:
        class_names = tuple(str(i) for i in range(num_classes))
    return num_classes, class_names
