"""`GradedStudent`: a student network that grows one stage per grade."""

import keras

from keras_edu.layers.teaching_reference import TeachingReference
from keras_edu.partition import ClassPartition


class GradedStudent:
    """A student split into stages that grows by one stage per grade.

    The target architecture is `stages[0] -> ... -> stages[K-1] -> head`.
    At grade `g` (1-based) the student is `stages[0..g-1]` topped by the
    teaching-reference block of grade `g`, which predicts the classes of
    groups `1..g` of `partition` (in ascending class id order). The block of
    the last grade is `head`, so the graduated student is exactly the target
    architecture. Stages are shared between grades: a stage keeps its trained
    weights when the student grows.

    Args:
        stages: The main body, an ordered list of Keras layers or models,
            one per grade; the first includes the stem.
        head: The target architecture's classifier (the last grade's block),
            mapping the last stage's output to `partition.num_classes` logits.
        partition: A `keras_edu.ClassPartition` with one group per stage.
        input_shape: The input shape without the batch axis, e.g. `(32, 32, 3)`.
        references: Optional list of the `K - 1` teaching-reference blocks of
            grades `1..K-1` (any layer or model that outputs the grade's class
            count). `None` (default) builds `keras_edu.layers.TeachingReference`
            blocks whose width is the last stage's channel count.

    Example:

    ```python
    import keras
    import keras_edu

    def stage(filters, strides):
        return keras.Sequential([
            keras.layers.Conv2D(filters, 3, strides=strides, padding="same"),
            keras.layers.ReLU(),
        ])

    partition = keras_edu.ClassPartition.contiguous(10, "1:1:1")
    head = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    )
    student = keras_edu.GradedStudent(
        stages=[stage(8, 1), stage(16, 2), stage(32, 2)],
        head=head,
        partition=partition,
        input_shape=(28, 28, 1),
    )
    student.model_for_grade(1).output_shape  # (None, 3)
    final = student.graduate()  # a plain keras.Model with 10 logits
    ```
    """

    def __init__(self, stages, head, partition, input_shape, references=None):
        if not isinstance(partition, ClassPartition):
            raise ValueError(
                "`partition` must be a `keras_edu.ClassPartition`. Received: "
                f"partition={partition!r}."
            )
        self.partition = partition
        self.input_shape = tuple(input_shape)
        self.stages = _check_stages(stages, partition)
        self._stage_shapes = _chain_stage_shapes(self.stages, self.input_shape)
        self.head = head
        self.references = self._resolve_references(references)
        _check_heads_output(self._heads(), self._stage_shapes, partition)
        self._models = {}

    @classmethod
    def from_model(cls, model, split_at, partition, references=None):
        """Splits a functional model into stages at the named layers.

        Args:
            model: A functional `keras.Model` (keras.applications, a KerasHub
                backbone with a classifier, your own, or `keras_edu.models`).
            split_at: The names of the last layer of each stage, one per
                group of `partition`, in order. The layers after the last
                name form the head.
            partition: A `keras_edu.ClassPartition`.
            references: As in the constructor.
        """
        if not getattr(model, "inputs", None) or len(model.inputs) != 1:
            raise ValueError(
                "`GradedStudent.from_model` needs a functional model with one "
                f"input. Received: {model!r}. For a subclassed model, build "
                "the stages yourself and use `GradedStudent(stages, head, ...)`."
            )
        if len(split_at) != partition.num_groups:
            raise ValueError(
                f"`split_at` must name {partition.num_groups} layers, the last "
                "layer of each stage (one stage per group of `partition`). "
                f"Received {len(split_at)}: {split_at!r}."
            )
        boundaries = [model.inputs[0]]
        for name in split_at:
            try:
                boundaries.append(model.get_layer(name).output)
            except ValueError as error:
                raise ValueError(
                    f"`split_at` names '{name}', which is not a layer of "
                    f"'{model.name}'. {error}"
                ) from None
        boundaries.append(model.outputs[0])
        pieces = [
            keras.Model(start, end, name=f"{model.name}_{part}")
            for start, end, part in zip(
                boundaries[:-1],
                boundaries[1:],
                [f"stage{k + 1}" for k in range(len(split_at))] + ["head"],
            )
        ]
        return cls(
            stages=pieces[:-1],
            head=pieces[-1],
            partition=partition,
            input_shape=model.inputs[0].shape[1:],
            references=references,
        )

    @property
    def num_grades(self):
        """The number of grades, equal to the number of stages and groups."""
        return len(self.stages)

    def model_for_grade(self, grade):
        """The student of grade `grade` (1-based), a functional `keras.Model`.

        The same grade always returns the same model object, whose layers are
        shared with the other grades' models.
        """
        self.partition._check_grade(grade)
        if grade not in self._models:
            inputs = keras.Input(self.input_shape, name="image")
            x = inputs
            for stage in self.stages[:grade]:
                x = stage(x)
            outputs = self._heads()[grade - 1](x)
            name = "student" if grade == self.num_grades else f"student_grade{grade}"
            self._models[grade] = keras.Model(inputs, outputs, name=name)
        return self._models[grade]

    def graduate(self):
        """The target architecture (last grade), a plain Keras model.

        It holds no teaching-reference block and loads without keras_edu
        when its stages and head are standard Keras layers.
        """
        return self.model_for_grade(self.num_grades)

    def classes_for_grade(self, grade):
        """The global class ids predicted at `grade`, in logit order."""
        return self.partition.classes_up_to(grade)

    def _heads(self):
        """The head of each grade: its teaching-reference block, then the real head."""
        return list(self.references) + [self.head]

    def _resolve_references(self, references):
        num_references = self.partition.num_groups - 1
        if references is None:
            width = self._stage_shapes[-1][-1]
            return [
                TeachingReference(
                    len(self.partition.classes_up_to(g)),
                    width=width,
                    name=f"teaching_reference_{g}",
                )
                for g in range(1, num_references + 1)
            ]
        references = list(references)
        if len(references) != num_references:
            raise ValueError(
                f"`references` must hold {num_references} blocks, one for each "
                f"grade but the last (whose block is `head`). Received "
                f"{len(references)}."
            )
        return references

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "stages": [serialize(s) for s in self.stages],
            "head": serialize(self.head),
            "partition": self.partition.get_config(),
            "input_shape": list(self.input_shape),
            "references": [serialize(r) for r in self.references],
        }

    @classmethod
    def from_config(cls, config):
        deserialize = keras.saving.deserialize_keras_object
        return cls(
            stages=[deserialize(s) for s in config["stages"]],
            head=deserialize(config["head"]),
            partition=ClassPartition.from_config(config["partition"]),
            input_shape=tuple(config["input_shape"]),
            references=[deserialize(r) for r in config["references"]],
        )


def _check_stages(stages, partition):
    stages = list(stages)
    if len(stages) != partition.num_groups:
        raise ValueError(
            f"The student has {len(stages)} stages but `partition` has "
            f"{partition.num_groups} groups; education distillation adds one "
            "stage per grade, so both must be equal."
        )
    for index, stage in enumerate(stages):
        if not isinstance(stage, keras.layers.Layer):
            raise ValueError(
                f"`stages[{index}]` must be a Keras layer or model. Received: "
                f"{stage!r}."
            )
    return stages


def _chain_stage_shapes(stages, input_shape):
    """Output shape of each stage; fails clearly when stages do not chain."""
    shape = (None,) + tuple(input_shape)
    shapes = []
    for index, stage in enumerate(stages):
        try:
            spec = stage.compute_output_spec(keras.KerasTensor(shape))
        except Exception as error:
            raise ValueError(
                f"`stages[{index}]` cannot take the output of the previous "
                f"stage, of shape {shape}. Check that consecutive stages "
                f"chain. Original error: {error}"
            ) from None
        shape = tuple(spec.shape)
        shapes.append(shape)
    return shapes


def _check_heads_output(blocks, stage_shapes, partition):
    for grade, block in enumerate(blocks, start=1):
        expected = len(partition.classes_up_to(grade))
        role = "head" if grade == len(blocks) else f"references[{grade - 1}]"
        try:
            spec = block.compute_output_spec(
                keras.KerasTensor(stage_shapes[grade - 1])
            )
        except Exception as error:
            raise ValueError(
                f"The block of grade {grade} (`{role}`) cannot take the "
                f"output of stage {grade}, of shape {stage_shapes[grade - 1]}. "
                f"Original error: {error}"
            ) from None
        if tuple(spec.shape)[-1] != expected:
            raise ValueError(
                f"The block of grade {grade} (`{role}`) outputs "
                f"{tuple(spec.shape)[-1]} logits, but grade {grade} predicts "
                f"{expected} classes (groups 1..{grade}). Give it "
                f"{expected} outputs."
            )
