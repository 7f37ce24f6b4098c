"""The student's cross-entropy on the labels, the `alpha` part of the loss."""

from keras import ops


def student_cross_entropy(y, logits, sample_weight=None, label_to_column=None):
    """Integer labels and the batch's cross-entropy, Keras-weighted.

    Args:
        y: Sparse `(batch,)`/`(batch, 1)` labels, or one-hot or soft
            `(batch, classes)` labels (MixUp, CutMix, label smoothing: the
            step routes on the most likely class and learns from the full
            distribution).
        logits: The student's float32 logits.
        sample_weight: Optional `(batch,)` weights.
        label_to_column: With a graded student, each class's position in
            this grade's logits (-1: not seen yet). Examples of unseen
            classes (validation data may hold them) give no loss, and the
            mean is over the examples of seen classes.

    Returns:
        `(labels, loss)`: `(batch,)` int32 global class ids, a scalar.
    """
    if label_to_column is not None:
        labels = sparse_labels(y, len(label_to_column))
        columns = grade_columns(labels, label_to_column)
        seen = ops.cast(columns >= 0, "float32")
        cross_entropy = seen * ops.sparse_categorical_crossentropy(
            ops.maximum(columns, 0), logits, from_logits=True
        )
        share = ops.cast(ops.shape(seen)[0], "float32") / ops.maximum(ops.sum(seen), 1.0)
        return labels, _weighted_mean(cross_entropy, sample_weight) * share
    num_classes = logits.shape[-1]
    if _is_dense(y, num_classes):
        dense = ops.cast(y, "float32")
        labels = ops.cast(ops.argmax(dense, axis=-1), "int32")
        cross_entropy = ops.categorical_crossentropy(dense, logits, from_logits=True)
        return labels, _weighted_mean(cross_entropy, sample_weight)
    labels = ops.cast(ops.reshape(y, (-1,)), "int32")
    # An out-of-range label would stop TensorFlow and PyTorch with an
    # internal error (JAX clamps it): BadLabelCount has counted it and fit
    # raises a clear error at the epoch's end, so the step uses class 0.
    valid = ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, num_classes))
    labels = ops.where(valid, labels, ops.zeros_like(labels))
    cross_entropy = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return labels, _weighted_mean(cross_entropy, sample_weight)


def grade_columns(labels, label_to_column):
    """Each class id's position in a grade's logits (-1: a class not seen yet)."""
    return ops.take(ops.convert_to_tensor(label_to_column), labels)


def sparse_labels(y, num_classes):
    """Integer class ids from sparse `(B,)`, `(B, 1)` or one-hot labels."""
    if _is_dense(y, num_classes):
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def _is_dense(y, num_classes):
    return len(y.shape) == 2 and y.shape[-1] == num_classes and num_classes > 1


def _weighted_mean(values, sample_weight):
    # Keras's "sum_over_batch_size": weighted sum over the batch size.
    if sample_weight is None:
        return ops.mean(values)
    weights = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    return ops.sum(values * weights) / ops.cast(ops.shape(values)[0], "float32")
