"""CIFAR architectures of the knowledge-distillation literature.

Flat functional Keras models (every layer directly in the graph, so any layer
can be tapped by name) ported from RepDistiller / CRD and mdistiller. Each
outputs logits. See `docs/models.md` for the parameter counts.

Example:

```python
import keras_edu.models

keras_edu.models.names()  # ["resnet110", "resnet14", ..., "wrn_40_2"]
model = keras_edu.models.resnet8x4(num_classes=10, input_shape=(28, 28, 1))
keras_edu.models.stage_ends("resnet8x4")  # ["stage1_out", ..., "stage3_out"]
```
"""

from keras_edu.models.registry import get
from keras_edu.models.registry import names
from keras_edu.models.registry import stage_ends
from keras_edu.models.resnet import cifar_resnet
from keras_edu.models.resnet import resnet8
from keras_edu.models.resnet import resnet8x4
from keras_edu.models.resnet import resnet14
from keras_edu.models.resnet import resnet20
from keras_edu.models.resnet import resnet32
from keras_edu.models.resnet import resnet32x4
from keras_edu.models.resnet import resnet44
from keras_edu.models.resnet import resnet56
from keras_edu.models.resnet import resnet110
from keras_edu.models.wide_resnet import cifar_wide_resnet
from keras_edu.models.wide_resnet import wrn_16_1
from keras_edu.models.wide_resnet import wrn_16_2
from keras_edu.models.wide_resnet import wrn_40_1
from keras_edu.models.wide_resnet import wrn_40_2

__all__ = [
    "cifar_resnet",
    "cifar_wide_resnet",
    "get",
    "names",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "stage_ends",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
