"""Project hygiene: pyproject.toml, constraints.txt and environment.yml agree; every committed
notebook is executed, in order, without errors, and follows the course's conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (CI and environment.yml use 3.11)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXTRAS = ("course", "dev")


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def constraint_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt: {line!r} is not an exact == pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt pins {req.name} twice"
        pins[name] = specs[0].version
    return pins


def environment_pip_entries() -> tuple[list[str], list[str]]:
    """(conda dependencies, pip entries) of environment.yml; yaml if available, else a line parser."""
    text = (ROOT / "environment.yml").read_text()
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is in the dev environment
        yaml = None
    if yaml is not None:
        env = yaml.safe_load(text)
        conda, pip = [], []
        for dep in env["dependencies"]:
            if isinstance(dep, dict):
                pip += [str(x) for x in dep.get("pip", [])]
            else:
                conda.append(str(dep))
        return conda, pip
    conda, pip, in_pip = [], [], False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
        elif stripped.startswith("- "):
            indent = len(line) - len(line.lstrip())
            (pip if in_pip and indent > 2 else conda).append(stripped[2:].strip())
    return conda, pip


def test_pyproject_dependencies_are_pinned_in_constraints():
    pins = constraint_pins()
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) has no == pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's range {req.specifier}"
        )


def test_environment_yml_installs_every_pyproject_dependency():
    if not (ROOT / "environment.yml").is_file():
        pytest.fail("environment.yml is missing")
    conda, pip = environment_pip_entries()
    conda_names = {re.split(r"[=<>! ]", c, maxsplit=1)[0] for c in conda}
    assert "python" in conda_names and "pip" in conda_names, f"environment.yml needs python and pip, has {conda}"
    assert any(re.fullmatch(r"-c\s+constraints\.txt", e) for e in pip), "environment.yml must use -c constraints.txt"
    editable = [e for e in pip if e.startswith("-e")]
    assert editable, "environment.yml must install lorakit itself (-e .)"
    extras: set[str] = set()
    for entry in editable:
        match = re.fullmatch(r"-e\s+\.(?:\[([\w,\s-]+)\])?", entry)
        assert match, f"unexpected editable entry {entry!r}"
        extras |= {x.strip() for x in (match.group(1) or "").split(",") if x.strip()}
    named = {canonicalize_name(Requirement(e).name): Requirement(e) for e in pip if not e.startswith("-")}
    pins = constraint_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    via_extras = {canonicalize_name(Requirement(r).name) for x in extras for r in project["optional-dependencies"][x]}
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        is_core = req in [Requirement(r) for r in project["dependencies"]]
        assert name in named or name in via_extras or is_core, f"{req.name} is missing from environment.yml"
        if name in named:
            assert named[name].specifier.contains(pins[name], prereleases=True), (
                f"environment.yml's {named[name]} excludes the constrained {pins[name]}"
            )
    unknown = set(named) - {canonicalize_name(r.name) for r in pyproject_requirements()}
    assert not unknown, f"environment.yml installs packages pyproject.toml does not declare: {sorted(unknown)}"


# ---------------------------------------------------------------- notebooks

ABSOLUTE_PATH = re.compile(r"(/work/|/tmp/|/home/|/Users/|[A-Z]:\\\\Users)")
needs_notebooks = pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks yet")


def _load(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _text_of(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    data = output.get("data", {})
    return "\n".join(str(v if isinstance(v, str) else "".join(v)) for k, v in data.items() if k.startswith("text/"))


@needs_notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    import nbformat

    nb = _load(path)
    nbformat.validate(nb)
    spec = nb.metadata.get("kernelspec", {})
    assert (spec.get("name"), spec.get("display_name"), spec.get("language")) == ("python3", "Python 3", "python")
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"execution counts are not 1..{len(code)} in order: {counts}"
    for i, cell in enumerate(code):
        for out in cell.outputs:
            assert out.output_type != "error", f"code cell {i} has an error output: {out.get('ename')}"
            assert not (out.output_type == "stream" and out.get("name") == "stderr"), (
                f"code cell {i} writes to stderr: {out.get('text', '')[:200]!r}"
            )
            text = _text_of(out)
            assert not ABSOLUTE_PATH.search(text), f"code cell {i} prints an absolute path: {text[:200]!r}"
        if re.search(r"^print\(", cell.source, flags=re.M):
            assert cell.outputs, f"code cell {i} prints but has no outputs (not executed?)"
    assert any(re.search(r"^\s*(import lorakit|from lorakit)", c.source, flags=re.M) for c in code), (
        "the notebook never imports lorakit"
    )
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"^#+\s*Check yourself", markdown, flags=re.M | re.I), "no 'Check yourself' heading"


@needs_notebooks
def test_readme_mentions_every_notebook():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if p.name not in readme]
    assert not missing, f"README.md does not mention {missing}"


def test_notebook_file_names():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"unexpected notebook name {path.name}"
        json.loads(path.read_text())  # parseable
