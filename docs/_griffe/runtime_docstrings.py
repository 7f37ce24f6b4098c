"""A griffe extension: docstrings that the model zoo writes at import time.

The named builders of `keras_edu.models` (`resnet8`, `wrn_16_2`, ...) share
one docstring template per family, filled in when the module is imported,
as `keras.applications` does. griffe reads sources statically and so sees
no docstring; this extension imports those modules and copies the runtime
docstrings onto the functions that have none.
"""

import importlib
import inspect
import os

import griffe

# Only these modules are imported; everything else stays static.
MODULES = ("keras_edu.models.resnet", "keras_edu.models.wide_resnet")


class RuntimeDocstrings(griffe.Extension):
    def on_module(self, *, mod, **kwargs):
        if mod.path not in MODULES:
            return
        # The lightest backend to import; the docstrings do not depend on it.
        os.environ.setdefault("KERAS_BACKEND", "jax")
        module = importlib.import_module(mod.path)
        for name, member in mod.members.items():
            # Imports (aliases) are skipped before `is_function` would try
            # to resolve them.
            if member.is_alias or not member.is_function:
                continue
            if member.docstring is not None:
                continue
            doc = inspect.getdoc(getattr(module, name, None))
            if doc:
                member.docstring = griffe.Docstring(doc, parent=member)
