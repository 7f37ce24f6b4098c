"""A griffe extension: the model zoo's builders, as they are at import time.

The named builders of `keras_edu.models` (`resnet8`, `wrn_16_2`, ...) are
generated from each family's config table when the module is imported
(`keras_edu.models.common.named_builders`), with one docstring template per
family, as `keras.applications` fills its docstrings. griffe reads sources
statically and so sees `resnet8 = BUILDERS["resnet8"]`, an attribute with
no signature and no docstring; this extension imports those modules and
documents each such name as the function it is: its runtime signature and
docstring. Functions defined in the source that have no docstring get the
runtime one too.
"""

import importlib
import inspect
import json
import os

import griffe

# Only these modules are imported; everything else stays static.
MODULES = ("keras_edu.models.resnet", "keras_edu.models.wide_resnet")

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _source(value):
    """A default as the source would spell it (strings in double quotes)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _function(name, runtime, attribute):
    """A griffe `Function` for a runtime function bound to `attribute`."""
    parameters = griffe.Parameters(
        *(
            griffe.Parameter(
                p.name,
                kind=_KINDS[p.kind],
                default=None if p.default is p.empty else _source(p.default),
            )
            for p in inspect.signature(runtime).parameters.values()
        )
    )
    function = griffe.Function(
        name,
        lineno=attribute.lineno,
        endlineno=attribute.endlineno,
        parameters=parameters,
    )
    function.docstring = griffe.Docstring(inspect.getdoc(runtime) or "", parent=function)
    return function


class RuntimeDocstrings(griffe.Extension):
    def on_module(self, *, mod, **kwargs):
        if mod.path not in MODULES:
            return
        # The lightest backend to import; the docstrings do not depend on it.
        os.environ.setdefault("KERAS_BACKEND", "jax")
        module = importlib.import_module(mod.path)
        for name, member in list(mod.members.items()):
            # Imports (aliases) are skipped before `is_function` would try
            # to resolve them.
            if member.is_alias:
                continue
            runtime = getattr(module, name, None)
            if member.is_attribute and inspect.isfunction(runtime):
                # A generated builder: document it as the function it is.
                if runtime.__module__ == mod.path and runtime.__name__ == name:
                    mod.set_member(name, _function(name, runtime, member))
                continue
            if not member.is_function or member.docstring is not None:
                continue
            doc = inspect.getdoc(runtime)
            if doc:
                member.docstring = griffe.Docstring(doc, parent=member)
