"""The documentation is tested: guides' code runs, the site builds strictly, docstrings are
complete.

* Every fenced ```python block of every page under ``docs/`` runs, the blocks of one page in
  sequence in one namespace, each page in a fresh Python process with JAX's default settings
  (not this suite's strict ones: the guides show what a user sees). A block that cannot run
  here (it needs a GPU, a Mac or a user's file) is marked with the line
  ``<!-- docs-test: skip -->`` right above its fence.
* ``mkdocs build --strict`` succeeds (broken links, missing pages and unresolved API references
  fail it).
* Every public function and class of ``convnn``, ``convnn.functional``, ``convnn.layers`` and
  ``convnn.interop`` has a docstring with the Google-style sections the project promises
  (Args, Returns, Raises, Example with doctests); pytest runs the doctests themselves
  (``--doctest-modules``).

Tiers: the whole module is marked ``docs``; running the guides and building the site are
``slow`` (minutes on two cores). A page whose code imports MLX or PyTorch is marked ``mlx`` /
``torch`` and skips without it (see ``references.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from references import require

# one worker runs the module: its fixture starts every selected run at once
pytestmark = [pytest.mark.docs, pytest.mark.xdist_group("docs")]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


# ---------------------------------------------------------------------------------------------
# Code blocks
# ---------------------------------------------------------------------------------------------


def code_blocks(text: str) -> list[tuple[int, str, bool]]:
    """The fenced code blocks of a Markdown page: (first line number, code, runs) per python block.

    ``runs`` is False for a block preceded by the skip mark. Blocks in other languages are not
    returned; indentation common to the fence is removed (blocks inside lists or admonitions).
    """
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            j += 1
        if info.split(" ")[0].split("{")[0] in ("python", "py", "python3"):
            body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip()
                    for ln in lines[i + 1:j]]
            prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            blocks.append((i + 2, "\n".join(body) + "\n", prev != SKIP_MARK))
        i = j + 1
    return blocks


def test_code_blocks_are_found():
    page = (
        "text\n```python\na = 1\n```\n\n<!-- docs-test: skip -->\n```python\nimport missing\n```\n"
        "```bash\nls\n```\n- item\n\n    ```python\n    b = a + 1\n    ```\n"
    )
    assert code_blocks(page) == [(3, "a = 1\n", True), (8, "import missing\n", False),
                                 (16, "b = a + 1\n", True)]


PAGES = sorted(p for p in DOCS.rglob("*.md")
               if any(run for _, _, run in code_blocks(p.read_text())))
#: Second opinions (marker -> module) a page's code may import.
REFERENCES = {"mlx": "mlx.core", "torch": "torch"}


def page_references(page: Path) -> list[str]:
    """The markers of the second opinions that the page's running code imports."""
    code = "\n".join(c for _, c, run in code_blocks(page.read_text()) if run)
    return [m for m in REFERENCES if re.search(rf"^\s*(import|from) {m}\b", code, re.MULTILINE)]


def _page_param(page: Path):
    marks = [getattr(pytest.mark, m) for m in page_references(page)]
    return pytest.param(page, marks=[pytest.mark.slow, *marks], id=str(page.relative_to(DOCS)))


# Runs pages one after the other in one process (imports are paid once), each page in a fresh
# namespace and a fresh working directory, its blocks in sequence; prints one JSON line of
# results: {page: None if it ran, else the traceback, naming the failing block's line}.
RUNNER = r"""
import json, os, sys, tempfile, traceback
results = {}
for page, blocks in json.load(sys.stdin):
    os.chdir(tempfile.mkdtemp(prefix="docs-page-"))
    namespace = {"__name__": "__main__"}
    results[page] = None
    for line, code in blocks:
        try:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
        except BaseException:
            results[page] = f"the block at {page}:{line} failed:\n" + traceback.format_exc()
            break
print("@@docs-results@@" + json.dumps(results))
"""
RESULT_MARK = "@@docs-results@@"


def _user_env() -> dict[str, str]:
    """The environment of a user's fresh process: no settings this suite made for itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"
    return env


def _run_pages(pages: list[Path], cwd: str) -> dict[Path, str | None]:
    """Runs the pages in one process; returns {page: None or what went wrong}."""
    payload = [
        (str(p.relative_to(ROOT)),
         [(ln, code) for ln, code, run in code_blocks(p.read_text()) if run])
        for p in pages
    ]
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(payload), capture_output=True,
        text=True, cwd=cwd, env=_user_env(), timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        crash = f"the process ended with {proc.returncode}:\n{proc.stderr[-6000:]}"
        return {p: crash for p in pages}
    results = json.loads(lines[-1][len(RESULT_MARK):])
    return {p: results[str(p.relative_to(ROOT))] for p in pages}


def _build_site(site: Path) -> subprocess.CompletedProcess:
    env = _user_env() | {"NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )


def _selected(request):
    """The pages of the selected tests whose references are installed, and whether the site
    build is selected."""
    pages, site = set(), False
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue  # (doctest items have no .module)
        if item.originalname == "test_guide_code_runs":
            page = item.callspec.params["page"]
            if all(importlib.util.find_spec(REFERENCES[m].split(".")[0])
                   for m in page_references(page)):
                pages.add(page)
        site = site or item.originalname == "test_mkdocs_build_strict"
    return sorted(pages), site


@pytest.fixture(scope="module")
def background(request, tmp_path_factory):
    """Starts the site build and the selected pages at once, the pages split into one process per
    core (balanced by their amount of code); each test then waits for its own result."""
    pages, site_selected = _selected(request)
    n = max(1, min(os.cpu_count() or 1, len(pages)))
    groups, loads = [[] for _ in range(n)], [0] * n
    for page in sorted(pages, key=lambda p: -len(p.read_text())):
        i = loads.index(min(loads))
        groups[i].append(page)
        loads[i] += len(page.read_text())
    pool = ThreadPoolExecutor(max_workers=n + 1)
    jobs = {}
    if site_selected:
        site = tmp_path_factory.mktemp("site") / "site"
        jobs["site"] = (site, pool.submit(_build_site, site))
    for group in filter(None, groups):
        future = pool.submit(_run_pages, group, str(tmp_path_factory.mktemp("pages")))
        jobs.update({page: future for page in group})
    yield jobs
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_guide_code_runs(page, background):
    for marker in page_references(page):
        require(REFERENCES[marker])
    problem = background[page].result()[page]
    assert problem is None, f"{page.relative_to(ROOT)}: {problem}"


# ---------------------------------------------------------------------------------------------
# The site
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mkdocs_build_strict(background):
    site, job = background["site"]
    proc = job.result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for page in ("index.html", "api/functional/index.html", "guides/from-pytorch/index.html"):
        assert (site / page).is_file(), page
    # the API reference was rendered from the docstrings, doctests as code
    functional = (site / "api/functional/index.html").read_text()
    assert 'id="convnn.functional.conv_transpose2d"' in functional
    assert "Raises" in functional and "&gt;&gt;&gt;" in functional


# ---------------------------------------------------------------------------------------------
# Docstrings
# ---------------------------------------------------------------------------------------------

MODULES = ["convnn", "convnn.functional", "convnn.layers", "convnn.interop"]


def public_objects():
    """(qualified name, object) for every public function and class of MODULES, once each."""
    seen, out = set(), []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue
            if not getattr(obj, "__module__", "").startswith("convnn"):
                continue  # re-exported from another package
            seen.add(id(obj))
            out.append((f"{mod_name}.{name}", obj))
    return out


SECTION = re.compile(r"^\s*(Args|Arguments|Attributes|Returns|Yields|Raises|Examples?):\s*$",
                     re.MULTILINE)


def sections(doc: str) -> dict[str, str]:
    """The Google-style sections of a docstring, by title ("Example" and "Examples" alike)."""
    doc = inspect.cleandoc(doc)
    found = list(SECTION.finditer(doc))
    out = {}
    for m, nxt in zip(found, found[1:] + [None]):
        title = "Example" if m[1].startswith("Example") else m[1]
        title = "Args" if title == "Arguments" else title
        out[title] = doc[m.end(): nxt.start() if nxt else len(doc)]
    return out


def _returns_none(fn) -> bool:
    ann = inspect.signature(fn).return_annotation
    return ann is None or ann == "None"


def _parameters(obj) -> list[str]:
    """The parameters a docstring's Args must name (not self, *args/**kwargs or the input)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [
        p.name for p in sig.parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _is_record(cls) -> bool:
    """NamedTuples and dataclasses: plain records, documented by Attributes."""
    return (issubclass(cls, tuple) and hasattr(cls, "_fields")
            or hasattr(cls, "__dataclass_fields__"))


def docstring_problems(name: str, obj) -> list[str]:
    doc = inspect.getdoc(obj) if inspect.isclass(obj) else obj.__doc__
    if not doc or not doc.strip():
        return [f"{name}: no docstring"]
    secs = sections(doc)
    problems = []
    record = inspect.isclass(obj) and _is_record(obj)
    if record:
        required = ["Attributes", "Example"]
    elif inspect.isclass(obj):
        required = ["Args", "Raises", "Example"]
    else:
        required = ["Args", "Raises", "Example"] + ([] if _returns_none(obj) else ["Returns"])
    for title in required:
        if title not in secs:
            problems.append(f"{name}: no {title} section")
    if "Example" in secs and ">>>" not in secs["Example"]:
        problems.append(f"{name}: the Example section has no doctest (>>>)")
    if "Args" in secs and not record:
        entries = arg_entries(secs["Args"])
        sig = inspect.signature(obj)
        for p in _parameters(obj):
            if p not in entries:
                problems.append(f"{name}: parameter {p!r} is not in Args")
                continue
            default = sig.parameters[p].default
            if default is not inspect.Parameter.empty and "default" not in entries[p].lower():
                problems.append(f"{name}: Args does not give the default of {p!r}")
            if p in ARRAY_ARGS and not re.search(r"\(\*?[A-Z]", entries[p]):
                problems.append(f"{name}: Args does not give the shape of {p!r}")
    return problems


ARRAY_ARGS = ("input", "weight", "x")  # array arguments whose Args entry must give a shape


def arg_entries(args: str) -> dict[str, str]:
    """Args section text -> {parameter name: its description, continuation lines joined}."""
    lines = [ln for ln in args.splitlines() if ln.strip()]
    if not lines:
        return {}
    base = min(len(ln) - len(ln.lstrip()) for ln in lines)
    entries, current = {}, None
    for ln in lines:
        m = re.match(r"(\*{0,2}\w+)\b[^:]*:(.*)$", ln[base:])
        if len(ln) - len(ln.lstrip()) == base and m:
            current = m[1].lstrip("*")
            entries[current] = m[2].strip()
        elif current is not None:
            entries[current] += " " + ln.strip()
    return entries


def test_docstring_checker_can_fail():
    def documented(x, y=1):
        """Summary.

        Args:
          x: ``(N, C)``.
          y: default 1.

        Returns:
          ``(N, C)``.

        Raises:
          ValueError: never.

        Example:
          >>> documented(1)
        """

    def half(x, y=1, z=None):
        """Summary.

        Args:
          x: an array
            of any shape.
          z: a value.

        Example:
          documented(1)
        """

    assert docstring_problems("documented", documented) == []
    assert docstring_problems("half", half) == [
        "half: no Raises section", "half: no Returns section",
        "half: the Example section has no doctest (>>>)",
        "half: Args does not give the shape of 'x'",
        "half: parameter 'y' is not in Args",
        "half: Args does not give the default of 'z'",
    ]


def test_public_api_is_found():
    names = {name for name, _ in public_objects()}
    assert {"convnn.conv2d", "convnn.layers.Conv2d",
            "convnn.interop.load_torch_state_dict"} <= names
    assert "convnn.functional.conv2d" not in names  # the same object as convnn.conv2d, once


@pytest.mark.parametrize("name_obj", public_objects(), ids=lambda t: t[0])
def test_docstring_sections(name_obj):
    name, obj = name_obj
    assert docstring_problems(name, obj) == []


def test_every_public_name_is_in_the_api_reference():
    """Each public module has a reference page, so nothing public is left out of the site."""
    text = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    functional = importlib.import_module("convnn.functional")
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            if mod_name == "convnn" and name in functional.__all__:
                continue  # documented once, on the convnn.functional page
            assert f"::: {mod_name}\n" in text or f"::: {mod_name}.{name}\n" in text, name


# ---------------------------------------------------------------------------------------------
# README and figures
# ---------------------------------------------------------------------------------------------


def test_readme_links_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert "docs/guides/from-pytorch.md" in local
    for link in local:
        assert (ROOT / link).exists(), link


def _figures_module():
    spec = importlib.util.spec_from_file_location("docs_figures", DOCS / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "size,kernel,stride,pad,dilation",
    [(7, 3, 2, (0, 0), 1), (5, 3, 1, (1, 1), 1), (7, 3, 1, (0, 0), 2), (8, 3, 2, (0, 1), 1),
     (6, 4, 3, (2, 1), 1), (9, 2, 2, (0, 0), 3)],
)
def test_figure_index_maps_follow_the_definition(size, kernel, stride, pad, dilation):
    """The figures' connections (convnn's Jacobian) equal the index formula of the definition."""
    figures = _figures_module()
    figures.checked_conv1d(size, kernel, stride, pad, dilation)


@pytest.mark.parametrize(
    "size,kernel,stride,padding,dilation,output_padding",
    [(4, 3, 2, 1, 1, 1), (3, 4, 2, 1, 1, 0), (3, 3, 3, 2, 2, 1), (5, 2, 1, 0, 2, 1)],
)
def test_figure_transposed_index_maps_follow_the_definition(size, kernel, stride, padding,
                                                            dilation, output_padding):
    figures = _figures_module()
    figures.checked_conv_transpose1d(size, kernel, stride, padding, dilation, output_padding)


def test_figures_are_in_the_docs():
    """Every figure the script draws exists and is shown on a page."""
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    names = re.findall(r'"([\w-]+\.png)": figure_', (DOCS / "figures.py").read_text())
    assert len(names) == 3
    for name in names:
        assert (DOCS / "img" / name).is_file(), name
        assert f"img/{name})" in pages, name
