"""The import rules of the package, checked by parsing every module's imports (no import runs):
entry points -> config, run -> engine, data, models, predict; engine/, data/, models/ and host/
never import Hydra nor the layers above them (a notebook uses them with plain objects);
legacy/ reads config.py files into overrides and imports only the config location."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cellmap_train"
ENTRY_POINTS = {"__init__", "__main__", "cli", "train"}
FOUNDATIONS = {"errors", "files"}  # imported from anywhere, import nothing of the package
PACKAGES = {"config", "run", "host", "data", "models", "engine", "predict", "legacy"}
# what each part may import of the package (besides itself and the foundations)
ALLOWED = {
    "host": set(),
    "models": set(),
    "data": {"host"},
    "engine": {"host", "data", "models"},
    "predict": {"host", "config", "run", "data", "models", "engine"},
    "config": {"host", "run", "data", "models", "engine"},
    "run": {"host", "config", "data", "models", "engine"},
    "legacy": {"config.location"},
}
NO_HYDRA = {"host", "models", "data", "engine"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "conf" not in path.relative_to(PACKAGE).parts:
            yield path


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported(path: Path) -> set[str]:
    """Dotted names a module imports, relative imports made absolute."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("cellmap_train", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_top_level_holds_the_entry_points_the_foundations_and_the_packages():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert loose <= ENTRY_POINTS | FOUNDATIONS, sorted(loose - ENTRY_POINTS - FOUNDATIONS)
    assert folders == PACKAGES, sorted(folders ^ PACKAGES)


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path):
    part = part_of(path)
    if part in ENTRY_POINTS:
        return
    names = imported(path)
    if part in NO_HYDRA:
        assert not {n for n in names if n.split(".")[0] == "hydra"}, f"{part}/ imports Hydra"
    ours = {n.split(".", 2)[1] if n.count(".") >= 1 else "" for n in names if n.startswith("cellmap_train.")}
    ours -= {part, ""} | FOUNDATIONS
    if part in FOUNDATIONS:
        assert not ours, f"{path.name} imports {sorted(ours)}"
        return
    allowed = ALLOWED[part]
    if part == "legacy":  # only the config location: where conf/ lives
        deep = {n for n in names if n.startswith("cellmap_train.config")}
        assert all(n.startswith("cellmap_train.config.location") for n in deep), sorted(deep)
        ours -= {"config"}
        # challenge.py holds the names a config.py imports (UNet_2D, ...) for files run with
        # --allow-exec where the challenge's package is absent: they are our models
        allowed = {"models"} if path.name == "challenge.py" else set()
    assert ours <= allowed, f"{part}/ imports {sorted(ours - allowed)}"


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= 400, f"{source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{node.name} at line {node.lineno}: {length} lines"


def test_every_package_ships_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("*") if (p / "__init__.py").is_file()}
    assert found | {"cellmap_train"} <= listed, sorted(found - listed)
