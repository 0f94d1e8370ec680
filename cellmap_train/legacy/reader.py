"""Read a challenge config.py as an AST: refuse dangerous top-level calls, then walk its
top-level statements with the folder to get the value of every variable. Nothing is run."""

from __future__ import annotations

import ast
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellmap_train.errors import ConfigError
from cellmap_train.legacy.device_count import is_device_count, per_device
from cellmap_train.legacy.fold import Call, Folder, LocalDef, Member, NotFoldable, Ref, Unknown, bind_target

# Calls that run programs or code: a config that makes them at import time is refused.
DANGEROUS = {"eval", "exec", "compile", "__import__", "breakpoint", "os.system", "os.popen", "os.remove",
             "os.unlink", "os.rmdir", "os.removedirs", "shutil.rmtree", "importlib.import_module",
             "runpy.run_path", "runpy.run_module"}
DANGEROUS_PREFIXES = ("subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "pty.", "ctypes.")
HARMLESS_CALLS = {"print", "logging.info", "logging.debug", "logging.warning", "warnings.filterwarnings",
                  "warnings.warn"}


class LegacyError(ConfigError):
    """A config.py that cannot be translated; the message is `FILE:LINE: name: why`."""

    def __init__(self, path: str, line: int | None, name: str | None, why: str):
        where = f"{path}:{line}" if line else path  # no line: the whole file
        super().__init__(f"{where}: {name}: {why}" if name else f"{where}: {why}")


@dataclass(frozen=True)
class Note:
    line: int
    name: str
    why: str


@dataclass
class ConfigFile:
    """The statically known content of a config.py."""
    path: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    per_device: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (value on one GPU, the count it scaled by)

    def note(self, line: int, name: str, why: str) -> None:
        self.notes.append(Note(line, name, why))

    def error(self, name: str, why: str, line: int | None = None) -> LegacyError:
        return LegacyError(self.path, self.lines.get(name, 0) if line is None else line, name, why)


def is_main_guard(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)
            and "__name__" in ast.unparse(stmt.test) and "__main__" in ast.unparse(stmt.test))


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def import_aliases(tree: ast.Module) -> dict[str, str]:
    """name bound at top level -> the dotted path it was imported as."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def top_level_nodes(tree: ast.Module):
    """Every node that runs when the file is imported (not function/class bodies, not __main__)."""
    pending = [s for s in tree.body if not is_main_guard(s)]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pending.extend(d for d in node.args.defaults + node.args.kw_defaults + node.decorator_list if d is not None)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.ClassDef):
            pending.extend(node.bases + node.decorator_list)
            continue
        pending.extend(c for c in ast.iter_child_nodes(node) if c is not None)


def refuse_dangerous_calls(tree: ast.Module, path: str) -> None:
    aliases = import_aliases(tree)
    for node in top_level_nodes(tree):
        if not isinstance(node, ast.Call) or dotted(node.func) is None:
            continue
        head, _, rest = dotted(node.func).partition(".")
        name = aliases.get(head, head) + (f".{rest}" if rest else "")
        if name in DANGEROUS or name.startswith(DANGEROUS_PREFIXES):
            raise LegacyError(path, node.lineno, name, "runs code or programs at import time; refusing to translate")


def parse(path: Path, shown: str) -> ast.Module:
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise LegacyError(shown, None, None, f"cannot read: {reason}") from None
    try:
        return ast.parse(source, filename=shown)
    except SyntaxError as err:
        raise LegacyError(shown, err.lineno or 0, "syntax", err.msg) from None


def is_local_module(module: str, level: int, folder: Path) -> bool:
    top = module.split(".")[0] if module else ""
    return level > 0 or (folder / f"{top}.py").exists() or (folder / top / "__init__.py").exists()


class Walker:
    """Runs the file's top-level statements through the folder (assignments only)."""

    def __init__(self, path: Path, config: ConfigFile):
        self.folder_dir = path.resolve().parent
        self.config = config
        self.folder = Folder({"__file__": str(path), "__name__": "config"})
        self.count_names: set[str] = set()  # names assigned the machine's device count

    def run(self, statements: list[ast.stmt]) -> None:
        for stmt in statements:
            handler = getattr(self, f"_{type(stmt).__name__}", None)
            if handler is not None:
                handler(stmt)
                self.note_env_reads(stmt)
            elif not isinstance(stmt, (ast.Pass, ast.Assert, ast.Global, ast.Nonlocal)):
                self._unknown_block(stmt, f"assigned inside a top-level {type(stmt).__name__.lower()} statement")

    def bind(self, target: ast.AST, value: Any, line: int) -> None:
        if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            container = self.folder.env.get(target.value.id)
            key = self.folder.fold(target.slice)
            if isinstance(container, (dict, list)) and not isinstance(key, Unknown):
                container[key] = value
                return
            self.config.note(line, ast.unparse(target), "item assignment not folded statically")
            return
        try:
            names = bind_target(target, value, self.folder.env)
        except NotFoldable as err:
            self.config.note(line, ast.unparse(target), str(err))
            return
        for name in names:
            self.config.lines[name] = line

    def _Import(self, stmt: ast.Import) -> None:
        for a in stmt.names:
            local = is_local_module(a.name, 0, self.folder_dir)
            path = a.name if a.asname else a.name.split(".")[0]
            self.bind(ast.Name(a.asname or path, ast.Store()), Ref(path, local), stmt.lineno)

    def _ImportFrom(self, stmt: ast.ImportFrom) -> None:
        local = is_local_module(stmt.module or "", stmt.level, self.folder_dir)
        for a in stmt.names:
            if a.name == "*":
                self.config.note(stmt.lineno, f"from {stmt.module} import *", "names it brings are not known statically")
                continue
            self.bind(ast.Name(a.asname or a.name, ast.Store()), Ref(f"{stmt.module or ''}.{a.name}".lstrip("."), local),
                      stmt.lineno)

    def _Assign(self, stmt: ast.Assign) -> None:
        value = self.folder.fold(stmt.value)
        for target in stmt.targets:
            self.bind(target, value, stmt.lineno)
            if not isinstance(target, ast.Name):
                continue
            if is_device_count(stmt.value, self.folder.env, self.count_names):
                self.count_names.add(target.id)
            if isinstance(value, Unknown) and value.asks_machine:
                scaled = per_device(self.folder.env, stmt.value, self.count_names)
                if scaled is not None:
                    self.config.per_device[target.id] = scaled

    def note_env_reads(self, stmt: ast.stmt) -> None:
        """A value read from this machine's environment is that of the machine translating it."""
        for key, value in self.folder.env_reads:
            shown = f"{value!r}" if key in os.environ else f"unset here, so {value!r}"
            names = [ast.unparse(t) for t in getattr(stmt, "targets", [getattr(stmt, "target", None)]) if t is not None]
            self.config.note(stmt.lineno, ", ".join(names) or "environment",
                             f"reads the environment variable {key} of this machine ({shown}); the translation holds that value")
        self.folder.env_reads.clear()

    def _AnnAssign(self, stmt: ast.AnnAssign) -> None:
        if stmt.value is not None:
            self.bind(stmt.target, self.folder.fold(stmt.value), stmt.lineno)

    def _AugAssign(self, stmt: ast.AugAssign) -> None:
        if isinstance(stmt.target, ast.Name):
            combined = ast.BinOp(ast.Name(stmt.target.id, ast.Load()), stmt.op, stmt.value)
            self.bind(stmt.target, self.folder.fold(ast.copy_location(combined, stmt)), stmt.lineno)
        else:
            self.config.note(stmt.lineno, ast.unparse(stmt.target), "augmented assignment not folded statically")

    def _FunctionDef(self, stmt) -> None:
        self.bind(ast.Name(stmt.name, ast.Store()), LocalDef(stmt.name, stmt.lineno), stmt.lineno)

    _AsyncFunctionDef = _ClassDef = _FunctionDef

    def _Expr(self, stmt: ast.Expr) -> None:
        if isinstance(stmt.value, ast.Constant):
            return  # docstring
        name = dotted(stmt.value.func) if isinstance(stmt.value, ast.Call) else None
        if name in HARMLESS_CALLS:
            return
        value = self.folder.fold(stmt.value)
        if isinstance(value, Unknown) or not (isinstance(stmt.value, ast.Call) and value is None):
            self.config.note(stmt.lineno, ast.unparse(stmt.value)[:60], "top-level expression not run")

    def _If(self, stmt: ast.If) -> None:
        if is_main_guard(stmt):
            return
        test = self.folder.fold(stmt.test)
        self.note_env_reads(stmt)
        if isinstance(test, (Call, Member)):
            test = Unknown(f"the truth of {ast.unparse(stmt.test)} is only known by running it")
        if isinstance(test, Unknown):
            self._both_branches(stmt, f"assigned under a condition not known statically ({test.why})", test.asks_machine)
        else:
            self.run(stmt.body if test else stmt.orelse)

    def _both_branches(self, stmt: ast.If, why: str, machine: str | None) -> None:
        """Under a condition only running tells, each branch is walked on its own copy of the names:
        a name both leave with the same value keeps it (`batch_size = 16` either way), any other
        name they touch is unknown."""
        before = self.folder.env
        try:
            branches = [copy.deepcopy(before), copy.deepcopy(before)]
        except Exception:  # noqa: BLE001 - a value that cannot be copied: fall back to "unknown"
            self._unknown_block(stmt, why, machine)
            return
        for env, body in zip(branches, (stmt.body, stmt.orelse)):
            self.folder.env = env
            self.run(body)
        self.folder.env = before
        first, second = branches
        for name in set(first) | set(second):
            if name in first and name in second and first[name] == second[name]:
                before[name] = first[name]
            else:
                before[name] = Unknown(why, stmt.lineno, machine)
                self.config.lines[name] = stmt.lineno

    def _Try(self, stmt: ast.Try) -> None:
        self.run(stmt.body + stmt.orelse + stmt.finalbody)  # as if nothing raised

    def _Delete(self, stmt: ast.Delete) -> None:
        for target in stmt.targets:
            if isinstance(target, ast.Name):
                self.folder.env.pop(target.id, None)

    def _unknown_block(self, stmt: ast.stmt, why: str, machine: str | None = None) -> None:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.folder.env[node.id] = Unknown(why, stmt.lineno, machine)
                self.config.lines[node.id] = stmt.lineno


def read_config(path: str | Path) -> ConfigFile:
    """Parse and statically evaluate a config.py; raises LegacyError for malformed files."""
    path = Path(path)
    shown = str(path)
    tree = parse(path, shown)
    refuse_dangerous_calls(tree, shown)
    config = ConfigFile(shown)
    walker = Walker(path, config)
    walker.run(tree.body)
    config.values = {k: v for k, v in walker.folder.env.items() if not k.startswith("__")}
    return config
