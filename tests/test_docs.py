"""The documentation's code runs: Markdown snippets and docstring Examples.

Conventions for code in README.md and docs/**/*.md:

- A fenced block tagged `python` runs. The blocks of a page run in page
  order in one shared namespace, as a reader following the page would run
  them, in a temporary working directory. Blocks tagged otherwise
  (`bash`, `text`, none) never run.
- `# not run` anywhere in a block (best followed by the reason,
  `# not run: needs your own teachers`) skips it. Use it for fragments that
  need the reader's data or models, a download, or a GPU.
- `# backends: tensorflow, jax` runs the block only on those backends.
- `# requires: onnxruntime, tf2onnx` runs it only when those modules are
  installed (optional extras).
- A comment line `# SomeError: message` (continued on the next comment
  lines, optionally cut with `...`) says the block must raise `SomeError`
  with that message.
- Calls to `load_fashion_mnist` never download here: without the local
  files they read the subset bundled with keras_edu (a block is skipped
  only if that raises `FileNotFoundError`, a broken install).

Every ```python block of the docstrings of the public names of keras_edu,
keras_edu.layers, .losses, .models, .data, .visualize and
.per_group_accuracy (their methods included) runs in a fresh namespace,
with the same markers; `_DOCSTRING_SKIPS` lists the Examples that need a
download. `_SLOW_PAGES` and `_SLOW_EXAMPLES` run only with `-m slow`.
"""

import importlib.util
import inspect
import os
import re
import traceback

import keras
import pytest

import keras_edu
import keras_edu.data.fashion_mnist
import keras_edu.per_group_accuracy
import keras_edu.visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
_NOT_RUN = re.compile(r"#\s*not run\b:?\s*(?P<reason>.*)$", re.MULTILINE)
_BACKENDS = re.compile(r"^\s*#\s*backends:\s*(?P<names>[\w ,]+)$", re.MULTILINE)
_REQUIRES = re.compile(r"^\s*#\s*requires:\s*(?P<names>[\w., ]+)$", re.MULTILINE)
_EXPECTED_ERROR = re.compile(r"^\s*#\s*(?P<name>[A-Z]\w*(?:Error|Exception)):\s*(?P<message>.*)$")

# Docstring Examples that cannot run offline, with the reason.
_DOCSTRING_SKIPS = {
    "keras_edu.data.from_tfds": "downloads CIFAR-100 through TensorFlow Datasets",
}
# Examples that repeat `resnet8`'s template on a deeper model: tracing them
# costs 3-15 s each, so they run only with `-m slow` (tests/test_models.py
# builds every architecture anyway).
_SLOW_EXAMPLES = {
    f"keras_edu.models.{name}"
    for name in (
        "resnet32", "resnet44", "resnet56", "resnet110", "resnet32x4",
        "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    )
}

_DOC_MODULES = (
    keras_edu,
    keras_edu.cost,
    keras_edu.growth,
    keras_edu.label_checks,
    keras_edu.schedules,
    keras_edu.layers,
    keras_edu.losses,
    keras_edu.models,
    keras_edu.data,
    keras_edu.visualize,
    keras_edu.per_group_accuracy,
)


# ------------------------------------------------------------- collection


def _public_names(module):
    """`__all__`, or the public names a module defines itself."""
    return getattr(module, "__all__", None) or [
        n for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    ]


def markdown_blocks(text):
    """`[(line, info, code)]` of the fenced blocks; `line` is the first code line."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence = match.group("indent"), match.group("fence")
        info = match.group("info").strip()
        body = []
        index += 1
        while index < len(lines):
            line = lines[index]
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            index += 1
        blocks.append((index - len(body) + 1, info, "\n".join(body) + "\n"))
        index += 1
    return blocks


def python_blocks(text):
    """`[(line, code)]` of the blocks tagged `python` (`python title="x"` too)."""
    return [
        (line, code)
        for line, info, code in markdown_blocks(text)
        if re.split(r"[\s{]", info, maxsplit=1)[0] == "python"
    ]


def _markdown_pages():
    pages = [os.path.join(ROOT, "README.md")]
    for folder, _, files in sorted(os.walk(os.path.join(ROOT, "docs"))):
        pages += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".md")]
    return [os.path.relpath(p, ROOT) for p in pages if os.path.exists(p)]


def _docstring_examples():
    """`{qualified name: docstring}` of every public object with an Example."""
    found = {}
    seen = set()

    def add(name, obj):
        # The object's own docstring: an override without one would show
        # the Keras base class's Examples, which are not ours to run.
        doc = inspect.cleandoc(obj.__doc__) if obj.__doc__ else None
        if doc and "```python" in doc and id(obj) not in seen:
            seen.add(id(obj))
            found[name] = doc

    for module in _DOC_MODULES:
        add(module.__name__, module)
        for name in _public_names(module):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            add(f"{module.__name__}.{name}", obj)
            if inspect.isclass(obj):
                for member_name, member in vars(obj).items():
                    if member_name.startswith("_"):
                        continue
                    member = getattr(member, "__func__", member)
                    member = getattr(member, "fget", member)
                    if inspect.isfunction(member):
                        add(f"{module.__name__}.{name}.{member_name}", member)
    return found


# ---------------------------------------------------------------- running


@pytest.fixture
def docs_sandbox(tmp_path, monkeypatch):
    """Runs code in `tmp_path`, offline, and restores the global dtype policy."""
    monkeypatch.chdir(tmp_path)

    def no_download():
        raise OSError("test_docs: downloads are disabled")

    monkeypatch.setattr(keras_edu.data.fashion_mnist, "_download", no_download)
    policy = keras.mixed_precision.global_policy().name
    try:
        yield tmp_path
    finally:
        keras.mixed_precision.set_global_policy(policy)


def skip_reason(code):
    """Why `code` does not run on this backend, or None when it runs."""
    match = _NOT_RUN.search(code)
    if match:
        return "marked '# not run'" + (f": {match.group('reason')}" if match.group("reason") else "")
    match = _BACKENDS.search(code)
    if match:
        names = [n.strip() for n in match.group("names").split(",") if n.strip()]
        if BACKEND not in names:
            return f"runs on backends {names} only"
    match = _REQUIRES.search(code)
    if match:
        names = [n.strip() for n in match.group("names").split(",") if n.strip()]
        missing = [n for n in names if importlib.util.find_spec(n) is None]
        if missing:
            return f"needs {', '.join(missing)} (not installed)"
    return None


def expected_error(code):
    """`(exception name, message prefix)` a block documents, or None."""
    lines = code.splitlines()
    for index, line in enumerate(lines):
        match = _EXPECTED_ERROR.match(line)
        if not match:
            continue
        parts = [match.group("message")]
        for more in lines[index + 1:]:
            if not more.lstrip().startswith("#"):
                break
            parts.append(more.lstrip()[1:])
        message = " ".join(" ".join(parts).split())
        return match.group("name"), message.split("...")[0].strip()
    return None


def run_block(code, namespace, where):
    """Runs one block; an AssertionError says where and why it failed."""
    expected = expected_error(code)
    try:
        exec(compile(code, where, "exec"), namespace)
    except Exception as error:  # noqa: BLE001 - reported with the snippet.
        if expected and type(error).__name__ == expected[0]:
            actual = " ".join(str(error).split())
            assert expected[1] in actual, (
                f"{where}: raised {expected[0]} as documented, but its message "
                f"differs.\nDocumented: {expected[1]}\nActual: {actual}"
            )
            return
        if isinstance(error, FileNotFoundError) and "load_fashion_mnist" in code:
            pytest.skip(f"{where}: the Fashion-MNIST files are not on this machine")
        raise AssertionError(
            f"{where} failed on the {BACKEND} backend:\n{code}\n"
            + "".join(traceback.format_exception(error)[-6:])
        ) from None
    assert expected is None, f"{where}: documented {expected[0]} was not raised."


# ------------------------------------------------------------------ tests


# Pages whose snippets train several graded students: they run with
# `-m slow`, and the behaviour they show is tested elsewhere by default.
_SLOW_PAGES = {
    "docs/guides/resume.md",  # tests/test_education.py resumes mid-grade
}


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(page, marks=pytest.mark.slow) if page in _SLOW_PAGES else page
        for page in _markdown_pages()
    ],
)
def test_markdown_snippets_run(page, docs_sandbox):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    if not blocks:
        pytest.skip("no python blocks")
    namespace = {"__name__": "__docs__"}
    skipped = []
    for line, code in blocks:
        reason = skip_reason(code)
        if reason:
            skipped.append(f"line {line}: {reason}")
            continue
        run_block(code, namespace, f"{page}, block at line {line}")
    if len(skipped) == len(blocks):
        pytest.skip("; ".join(skipped))


_EXAMPLES = _docstring_examples()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_EXAMPLES else name
        for name in sorted(_EXAMPLES)
    ],
)
def test_docstring_examples_run(name, docs_sandbox):
    if name in _DOCSTRING_SKIPS:
        pytest.skip(_DOCSTRING_SKIPS[name])
    blocks = re.findall(r"```python\n(.*?)```", _EXAMPLES[name], re.DOTALL)
    for number, code in enumerate(blocks, start=1):
        reason = skip_reason(code)
        if reason:
            continue
        run_block(code, {"__name__": "__docs__"}, f"{name} docstring, Example {number}")


# --------------------------------------------------- the conventions above


def test_markdown_parser_and_markers():
    text = (
        "intro\n"
        "```python\nx = 1\n```\n"
        "- item\n\n"
        "  ```python\n  y = x + 1\n  ```\n"
        "```bash\nls\n```\n"
        "````python\n```\nnested\n````\n"
    )
    blocks = python_blocks(text)
    assert [code for _, code in blocks] == ["x = 1\n", "y = x + 1\n", "```\nnested\n"]
    assert blocks[0][0] == 3
    assert skip_reason("a = 1  # not run: needs teachers\n") == "marked '# not run': needs teachers"
    other = "jax" if BACKEND != "jax" else "torch"
    assert skip_reason(f"# backends: {other}\n") is not None
    assert skip_reason(f"# backends: {BACKEND}, {other}\n") is None
    assert skip_reason("# requires: os, no_such_module_xyz\n") == (
        "needs no_such_module_xyz (not installed)"
    )
    assert skip_reason("# requires: os.path\n") is None
    code = "f()\n# ValueError: Unknown name 'x'. Did you\n# mean 'y'? Known: a, ...\n"
    assert expected_error(code) == ("ValueError", "Unknown name 'x'. Did you mean 'y'? Known: a,")


def test_the_readme_quick_start_runs():
    # The quick start is the first thing a user copies: it must run as
    # written (on the bundled data where the full set is missing), so no
    # marker may skip it. `test_markdown_snippets_run[README.md]` runs it.
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    quick_start = text[text.index("## Quick start"):]
    quick_start = quick_start[: quick_start.index("\n## ", 1)]
    blocks = python_blocks(quick_start)
    assert blocks, "README.md's quick start has no ```python block."
    for line, code in blocks:
        assert skip_reason(code) is None, (
            f"README.md's quick start (block at line {line} of the section) "
            f"does not run in the docs tests: {skip_reason(code)}."
        )


# Public functions whose Example lives elsewhere.
_EXAMPLE_ELSEWHERE = {
    "keras_edu.models.names": "the keras_edu.models module docstring",
}


def test_every_public_name_has_a_runnable_example():
    # The API reference shows these Examples; a public class or function
    # without one is a gap in the docs.
    missing = []
    for module in _DOC_MODULES:
        for name in _public_names(module):
            obj = getattr(module, name)
            qualified = f"{module.__name__}.{name}"
            if (
                (inspect.isclass(obj) or inspect.isfunction(obj))
                and "```python" not in (obj.__doc__ or "")
                and qualified not in _EXAMPLE_ELSEWHERE
            ):
                missing.append(qualified)
    assert not missing, f"Add an Example to the docstrings of {missing}."


def _resolve(path):
    """The object at a dotted path such as `keras_edu.data.from_arrays`."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(path)


def test_api_reference_lists_every_public_name():
    documented = {}
    api = os.path.join(ROOT, "docs", "api")
    for page in sorted(os.listdir(api)):
        with open(os.path.join(api, page), encoding="utf-8") as f:
            for path in re.findall(r"^::: ([\w.]+)", f.read(), re.MULTILINE):
                documented[id(_resolve(path))] = path
    missing = []
    for module in _DOC_MODULES:
        for name in _public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or name == "__version__":
                continue
            if id(obj) not in documented:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, (
        f"Add `::: name` lines for {missing} to a page of docs/api/ (and the "
        "page to mkdocs.yml's nav if it is new)."
    )


def test_api_pages_read_the_zoo_builders_runtime_docstrings():
    # The named builders get their docstrings at import; the API site reads
    # sources statically, so without the extension their pages are empty.
    griffe = pytest.importorskip("griffe")
    extension = os.path.join(ROOT, "docs", "_griffe", "runtime_docstrings.py")
    package = griffe.load(
        "keras_edu",
        search_paths=[ROOT],
        extensions=griffe.load_extensions(f"{extension}:RuntimeDocstrings"),
    )
    for family, name in (("resnet", "resnet8"), ("wide_resnet", "wrn_40_2")):
        builder = package[f"models.{family}.{name}"]
        module = importlib.import_module(f"keras_edu.models.{family}")
        assert builder.docstring.value == inspect.getdoc(getattr(module, name))
    # Functions with a docstring in the source keep it.
    generic = package["models.resnet.cifar_resnet"]
    assert generic.docstring.value.startswith("Builds a CIFAR ResNet")
