"""Static evaluation of a challenge config.py: fold what can be known without running it.

Literals, arithmetic, names assigned earlier, f-strings, `.format`, `len`, `os.path.join`,
`UPath(...)/...`, `get_tested_classes()` become plain Python values. Calls to anything
else (model, optimizer, loss constructors) become `Call` records that the mapper reads.
What cannot be known becomes `Unknown(why)`; nothing in the file is ever executed.
"""

from __future__ import annotations

import ast
import operator
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from cellmap_train.legacy.tested_classes import TESTED_CLASSES


@dataclass(frozen=True)
class Ref:
    """A name imported from a module (or an attribute of one): `torch.optim.AdamW`."""
    path: str
    local: bool = False  # from a module next to the config file: only known by running it

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class LocalDef:
    """A class or function defined in the config file itself."""
    name: str
    line: int


@dataclass
class Call:
    """A call that is recorded, not evaluated: `UNet_2D(1, 2)`, `torch.optim.AdamW(...)`."""
    func: Any  # Ref | LocalDef | Member
    args: list
    kwargs: dict
    line: int
    source: str = ""


@dataclass(frozen=True)
class Member:
    """An attribute of a recorded call, e.g. `model.parameters`."""
    owner: Any
    attr: str


@dataclass
class Unknown:
    why: str
    line: int = 0
    asks_machine: str | None = None  # the call or variable of the machine it depends on, e.g. torch.cuda.is_available()


@dataclass(frozen=True)
class PathValue:
    """`UPath("a") / "b"` or `pathlib.Path(...)`: a posix path string with `.path`."""
    text: str

    def __truediv__(self, other):
        return PathValue(posixpath.join(self.text, str(other.text if isinstance(other, PathValue) else other)))


PATH_TYPES = {"upath.UPath", "pathlib.Path", "pathlib.PurePath", "pathlib.PosixPath", "pathlib.PurePosixPath"}
SAFE_BUILTINS = {f.__name__: f for f in (len, list, tuple, dict, int, float, str, bool, range, sorted, min, max,
                                          abs, round, sum, set, reversed, enumerate, zip)}
SAFE_FUNCTIONS = {
    "os.path.join": posixpath.join, "os.path.dirname": posixpath.dirname, "os.path.basename": posixpath.basename,
    "os.path.normpath": posixpath.normpath, "os.path.splitext": posixpath.splitext,
}
# What the machine that trains answers: never folded to this machine's answer. An environment
# variable is read here (with a note), except those torchrun sets differently on every rank.
MACHINE_CALLS = ("torch.cuda.", "torch.backends.mps.is_available", "torch.backends.cudnn.is_available", "torch.mps.",
                 "torch.distributed.", "torch.accelerator.", "os.cpu_count", "multiprocessing.cpu_count",
                 "socket.gethostname", "platform.node")
DEVICE_COUNTS = {"torch.cuda.device_count", "torch.distributed.get_world_size", "torch.accelerator.device_count",
                 "torch.mps.device_count"}
ENV_READS = {"os.getenv", "os.environ.get"}
TORCHRUN_VARIABLES = {"LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
SAFE_METHODS = {
    str: {"format", "upper", "lower", "replace", "strip", "split", "join", "startswith", "endswith", "title"},
    list: {"append", "extend", "insert", "remove", "pop", "index", "count", "copy"},
    dict: {"get", "update", "copy", "keys", "values", "items", "pop", "setdefault"},
    tuple: {"index", "count"},
}
BIN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
COMPARE_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
               ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
               ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
MAX_SIZE = 100_000  # refuse to fold e.g. [0] * 10**9


class NotFoldable(Exception):
    def __init__(self, why: str, asks_machine: str | None = None):
        super().__init__(why)
        self.asks_machine = asks_machine


def asks_machine(source: str) -> NotFoldable:
    return NotFoldable(f"{source} asks the machine that trains; not known before it runs", source)


def is_plain(value: Any) -> bool:
    """True for values made only of literals (what an override can hold)."""
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def first_unknown(value: Any) -> Unknown | None:
    if isinstance(value, Unknown):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((u for u in map(first_unknown, items) if u is not None), None)


@dataclass
class Folder:
    """Evaluates expression nodes against `env` (the file's names assigned so far).
    `one_device`: the machine's device count reads as 1 (the per-GPU value of a product)."""
    env: dict = field(default_factory=dict)
    one_device: bool = False
    env_reads: list = field(default_factory=list)  # (variable, value read) of this machine's environment

    def fold(self, node: ast.AST) -> Any:
        try:
            return self._eval(node)
        except NotFoldable as err:
            return Unknown(str(err), getattr(node, "lineno", 0), err.asks_machine)
        except (ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
            return Unknown(f"{type(err).__name__}: {err}", getattr(node, "lineno", 0))

    def _eval(self, node: ast.AST) -> Any:
        method = getattr(self, f"_eval_{type(node).__name__}", None)
        if method is None:
            raise NotFoldable(f"{type(node).__name__.lower()} expressions are not folded statically")
        return method(node)

    def _known(self, node: ast.AST) -> Any:
        value = self._eval(node)
        unknown = first_unknown(value)
        if unknown is not None:
            raise NotFoldable(unknown.why, unknown.asks_machine)
        return value

    def _truth(self, node: ast.AST) -> bool:
        """A condition's truth; what a recorded call returns is only known by running it."""
        value = self._known(node)
        if isinstance(value, (Call, Member)):
            raise NotFoldable(f"the truth of {ast.unparse(node)} is only known by running it")
        return bool(value)

    def _eval_Constant(self, node):
        return node.value

    def _eval_Name(self, node):
        if node.id in self.env:
            value = self.env[node.id]
            if isinstance(value, Unknown):
                raise NotFoldable(f"uses {node.id}, which is not known statically ({value.why})", value.asks_machine)
            return value
        if node.id in SAFE_BUILTINS:
            return SAFE_BUILTINS[node.id]
        raise NotFoldable(f"{node.id} is not defined before line {node.lineno}")

    def _eval_Attribute(self, node):
        base = self._eval(node.value)
        if isinstance(base, Ref):
            return Ref(f"{base.path}.{node.attr}", base.local)
        if isinstance(base, PathValue):
            if node.attr == "path":
                return base.text
            if node.attr in ("parent", "name", "stem", "suffix"):
                parts = {"parent": PathValue(posixpath.dirname(base.text)), "name": posixpath.basename(base.text),
                         "stem": posixpath.splitext(posixpath.basename(base.text))[0],
                         "suffix": posixpath.splitext(base.text)[1]}
                return parts[node.attr]
        if isinstance(base, (Call, LocalDef, Member)):
            return Member(base, node.attr)
        allowed = next((names for kind, names in SAFE_METHODS.items() if isinstance(base, kind)), set())
        if node.attr in allowed:
            return getattr(base, node.attr)
        raise NotFoldable(f"attribute .{node.attr} of a {type(base).__name__} is not folded statically")

    def _eval_Subscript(self, node):
        base = self._known(node.value)
        if isinstance(base, Ref) and base.path == "os.environ" and not base.local:
            return self._read_env(self._known(node.slice), None, required=True)
        if isinstance(base, (Ref, Call, LocalDef, Member)):
            raise NotFoldable("indexing a constructed object is not folded statically")
        return base[self._known(node.slice)]

    def _eval_Slice(self, node):
        part = lambda n: None if n is None else self._known(n)  # noqa: E731
        return slice(part(node.lower), part(node.upper), part(node.step))

    def _eval_Index(self, node):  # Python < 3.9
        return self._eval(node.value)

    def _eval_BinOp(self, node):
        left, right = self._known(node.left), self._known(node.right)
        op = type(node.op)
        if op is ast.Pow and isinstance(right, (int, float)) and abs(right) > 64:
            raise NotFoldable("exponent too large to fold")
        if op is ast.Div and isinstance(left, PathValue):
            return left / right
        if op not in BIN_OPS:
            raise NotFoldable(f"operator {op.__name__} is not folded")
        if op is ast.Mult and any(isinstance(v, (str, list, tuple)) for v in (left, right)):
            size = len(left if isinstance(left, (str, list, tuple)) else right)
            count = right if isinstance(left, (str, list, tuple)) else left
            if isinstance(count, int) and size * count > MAX_SIZE:
                raise NotFoldable("repetition too large to fold")
        if op is ast.Mod and isinstance(left, str):
            raise NotFoldable("%-formatting is not folded")
        return BIN_OPS[op](left, right)

    def _eval_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            return not self._truth(node.operand)
        return UNARY_OPS[type(node.op)](self._known(node.operand))

    def _eval_BoolOp(self, node):
        for value in node.values[:-1]:  # Python's short circuit: the first false (and) / true (or) value
            if self._truth(value) != isinstance(node.op, ast.And):
                return self._known(value)
        return self._known(node.values[-1])

    def _eval_Compare(self, node):
        left = self._known(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = self._known(comparator)
            if any(isinstance(v, (Call, Member)) for v in (left, right)):  # an object built when the file runs
                raise NotFoldable(f"{ast.unparse(node)} compares what only running the file makes")
            if not COMPARE_OPS[type(op)](left, right):
                return False
            left = right
        return True

    def _eval_IfExp(self, node):
        return self._eval(node.body) if self._truth(node.test) else self._eval(node.orelse)

    def _eval_JoinedStr(self, node):
        return "".join(str(self._eval_FormattedValue(v)) if isinstance(v, ast.FormattedValue) else v.value
                       for v in node.values)

    def _eval_FormattedValue(self, node):
        value = self._known(node.value)
        value = {-1: value, 115: str(value), 114: repr(value), 97: ascii(value)}[node.conversion]
        spec = self._eval_JoinedStr(node.format_spec) if node.format_spec else ""
        return format(value, spec)

    def _eval_List(self, node):
        return [self._eval(e) for e in node.elts]

    def _eval_Tuple(self, node):
        return tuple(self._eval(e) for e in node.elts)

    def _eval_Set(self, node):
        return {self._known(e) for e in node.elts}

    def _eval_Dict(self, node):
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:  # {**other}
                out.update(self._known(value))
            else:
                out[self._known(key)] = self._eval(value)
        return out

    def _eval_ListComp(self, node):
        return list(self._comprehension(node, lambda f: f._eval(node.elt)))

    def _eval_DictComp(self, node):
        return dict(self._comprehension(node, lambda f: (f._known(node.key), f._eval(node.value))))

    def _comprehension(self, node, produce):
        def scope(env):  # the comprehension's own names, this folder's settings and notes
            return Folder(env, self.one_device, self.env_reads)

        def walk(generators, env):
            if not generators:
                yield produce(scope(env))
                return
            gen, rest = generators[0], generators[1:]
            for item in scope(env)._known(gen.iter):
                inner = dict(env)
                bind_target(gen.target, item, inner)
                if all(scope(inner)._truth(cond) for cond in gen.ifs):
                    yield from walk(rest, inner)
        return walk(node.generators, dict(self.env))

    def _eval_Call(self, node):
        func = self._eval(node.func)
        args = [self._eval(a.value) if isinstance(a, ast.Starred) else self._eval(a) for a in node.args]
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise NotFoldable("*args in a call is not folded")
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                kwargs.update(self._known(kw.value))
            else:
                kwargs[kw.arg] = self._eval(kw.value)
        if isinstance(func, Ref):
            return self._call_ref(func, args, kwargs, node)
        if isinstance(func, (LocalDef, Member)):
            return Call(func, args, kwargs, node.lineno, ast.unparse(node))
        if callable(func):  # a safe builtin or a bound method of a literal
            return func(*[self._plain(a) for a in args], **{k: self._plain(v) for k, v in kwargs.items()})
        raise NotFoldable(f"{ast.unparse(node.func)} is not callable")

    def _plain(self, value):
        unknown = first_unknown(value)
        if unknown is not None:
            raise NotFoldable(unknown.why)
        if isinstance(value, PathValue):
            return value.text
        return value

    def _call_ref(self, func: Ref, args, kwargs, node):
        if not func.local and func.path in DEVICE_COUNTS and self.one_device:
            return 1
        if not func.local and func.path.startswith(MACHINE_CALLS):
            raise asks_machine(f"{func.path}()")
        if not func.local and func.path in ENV_READS:
            return self._read_env(*map(self._plain, args), **{k: self._plain(v) for k, v in kwargs.items()})
        if func.path in SAFE_FUNCTIONS and not func.local:
            return SAFE_FUNCTIONS[func.path](*map(self._plain, args), **{k: self._plain(v) for k, v in kwargs.items()})
        if func.path in PATH_TYPES:
            return PathValue(posixpath.join(*map(str, map(self._plain, args))) if args else ".")
        if func.name == "get_tested_classes" and not func.local:
            if args or kwargs:
                raise NotFoldable("get_tested_classes() with a custom csv_path needs the file")
            return list(TESTED_CLASSES)
        return Call(func, args, kwargs, node.lineno, ast.unparse(node))


    def _read_env(self, key, default=None, required: bool = False):
        if not isinstance(key, str):
            raise NotFoldable(f"environment variable name {key!r} is not a string")
        if key in TORCHRUN_VARIABLES:
            if self.one_device and key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
                return "1"
            raise asks_machine(f"the environment variable {key} (torchrun sets it for each process)")
        if required and key not in os.environ:
            raise NotFoldable(f"the environment variable {key} is not set here")
        value = os.environ.get(key, default)
        self.env_reads.append((key, value))
        return value


def bind_target(target: ast.AST, value: Any, env: dict) -> list[str]:
    """Assign `value` to a Name or (nested) Tuple target in env; returns the names bound."""
    if isinstance(target, ast.Name):
        env[target.id] = value
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        if isinstance(value, Unknown) or not isinstance(value, (list, tuple)) or len(value) != len(target.elts):
            unknown = value if isinstance(value, Unknown) else Unknown("cannot unpack statically", target.lineno)
            return [n for t in target.elts for n in bind_target(t, unknown, env)]
        return [n for t, v in zip(target.elts, value) for n in bind_target(t, v, env)]
    raise NotFoldable(f"assignment to {ast.unparse(target)} is not folded")
