"""A batch written as a product with the machine's device count, `per_gpu *
torch.cuda.device_count()`: its value on one device is known statically (batch_size here is per
process), though the product is not. Any other expression of the count is never guessed."""

from __future__ import annotations

import ast
from typing import Any

from cellmap_train.legacy.fold import DEVICE_COUNTS, ENV_READS, Folder, Ref, first_unknown


def is_device_count(node: ast.AST, env: dict, count_names: set[str]) -> bool:
    """True for the device count itself: a count call, int() of torchrun's world size, or a name
    that was assigned exactly that."""
    if isinstance(node, ast.Name):
        return node.id in count_names
    if not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Name) and node.func.id == "int" and len(node.args) == 1:
        return _world_size_read(node.args[0], env)
    func = Folder(env).fold(node.func)
    return isinstance(func, Ref) and not func.local and func.path in DEVICE_COUNTS


def _world_size_read(node: ast.AST, env: dict) -> bool:
    folder = Folder(env)
    if isinstance(node, ast.Subscript):
        base, key = folder.fold(node.value), folder.fold(node.slice)
    elif isinstance(node, ast.Call) and node.args:
        base, key = folder.fold(node.func), folder.fold(node.args[0])
    else:
        return False
    path = base.path if isinstance(base, Ref) and not base.local else None
    return path in ("os.environ", *ENV_READS) and key in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")


def product_factors(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return product_factors(node.left) + product_factors(node.right)
    return [node]


def per_device(env: dict, node: ast.AST, count_names: set[str]) -> tuple[Any, str] | None:
    """(its value on one device, the count's source) for a product with exactly one factor that
    is the device count; None for any other expression (those are never guessed)."""
    counts = [f for f in product_factors(node) if is_device_count(f, env, count_names)]
    if len(counts) != 1:
        return None
    one = {k: 1 if k in count_names else v for k, v in env.items()}
    value = Folder(one, one_device=True).fold(node)
    return None if first_unknown(value) is not None else (value, ast.unparse(counts[0]))
