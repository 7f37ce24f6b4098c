"""How a Distiller runs its distillation term: forwards, branches, the loss.

A `Distiller` asks its term for a wiring (`term.distiller_wiring(distiller)`
when the term has one, as `keras_edu.losses.AMTML` does, else
`TermWiring`). The wiring is the one place that calls the teachers in a
training step, maps one branch's teacher targets and student columns to a
dict of terms, and turns the batch's combined terms into the training loss.
"""

import numpy as np
from keras import ops

from keras_edu import teacher_cache


def wiring_for(distiller):
    """The wiring of `distiller.distillation_term`."""
    make = getattr(distiller.distillation_term, "distiller_wiring", None)
    return make(distiller) if make is not None else TermWiring(distiller)


class TermWiring:
    """Runs a term with `per_sample_loss` (or a core Keras term) as KD.

    A branch gives `{"kd": per-example loss}`; the loss is
    `alpha * CE + (1 - alpha) * KD`, KD averaged over the taught examples.
    Subclasses (`AMTML`'s) add student feature taps, more terms and layers.
    """

    # Log keys of training steps only (evaluation runs no teacher).
    log_keys = ("student_loss", "distillation_loss")
    # Log keys a step fills but that are never shown.
    hidden_log_keys = ()

    def __init__(self, distiller):
        self.distiller = distiller
        self.term = distiller.distillation_term

    @property
    def cache_taught_rows_only(self):
        """Whether the teacher cache may skip the rows a teacher never teaches.

        A per-example term of an untaught row is masked out, so its teacher
        outputs are never read; a core Keras term's batch scalar reads every
        row.
        """
        return hasattr(self.term, "per_sample_loss")

    def refresh(self):
        """Called after the student changed (a grade switch)."""

    def forward(self, inputs, training):
        """The Distiller's forward pass: the student's logits."""
        return self.distiller.student(inputs, training=training)

    def split_prediction(self, y_pred):
        """`(logits, features)` of a forward pass's output."""
        return y_pred, None

    def features_for(self, x, features):
        """Student features the term reads in a training step (None here)."""
        return features

    def teacher_output(self, k, x):
        """Teacher k's outputs on a batch, float32, no gradient: cached or run."""
        cached = teacher_cache.outputs_of(x, k)
        if cached is not None:
            return {"logits": ops.cast(cached["logits"], "float32")}
        logits = ops.cast(self.distiller.teachers[k](x), "float32")
        return {"logits": ops.stop_gradient(logits)}

    def cache_forward(self, k):
        """What the teacher cache keeps of teacher k for a NumPy batch."""
        model = self.distiller.teachers[k].model
        return lambda batch: {
            "logits": np.asarray(model.predict_on_batch(batch), "float32")
        }

    def run_branch(self, branch, x, logits, features):
        """`{"kd": (rows,)}`: the term against the branch's teacher ensemble."""
        if not branch.members:
            return {"kd": ops.zeros_like(logits[:, 0])}
        targets = [
            _columns(self.teacher_output(k, x)["logits"], columns)
            for k, columns in branch.members
        ]
        student = _columns(logits, branch.student_columns)
        if hasattr(self.term, "per_sample_loss"):
            kd = self.term.per_sample_loss(
                targets if len(targets) > 1 else targets[0], student
            )
            return {"kd": kd}
        # A core Keras term returns a batch scalar: average it over the
        # teachers and spread it over the rows (each is covered here).
        scalar = sum(self.term.compute_loss(t, student) for t in targets)
        return {"kd": ops.ones_like(student[:, 0]) * (scalar / len(targets))}

    def total_loss(self, student_loss, terms, taught, sample_weight):
        """`alpha * CE + (1 - alpha) * KD`; logs the distillation part."""
        distiller = self.distiller
        kd = taught_mean(terms["kd"], taught, sample_weight)
        distiller.distillation_loss_tracker.update_state(kd, ops.shape(taught)[0])
        return distiller.alpha * student_loss + (1.0 - distiller.alpha) * kd

    def teacher_weights(self, x, batch_size):
        raise ValueError(
            "`teacher_weights` needs a Distiller built with "
            "`loss=keras_edu.losses.AMTML(...)`: other losses learn no "
            "per-example teacher weights."
        )


def taught_mean(values, taught, sample_weight):
    """Sum of `values` (weighted) over the number of taught examples."""
    if sample_weight is not None:
        values = values * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
    return ops.sum(values) / ops.maximum(ops.sum(taught), 1.0)


def _columns(logits, columns):
    return logits if columns is None else ops.take(logits, columns, axis=1)
