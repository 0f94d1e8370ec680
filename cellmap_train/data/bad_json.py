"""A zarr metadata file that is not JSON: zarr raises a bare JSONDecodeError naming no file;
find the file so the one-line error names it."""

from __future__ import annotations

import json

METADATA_FILES = (".zgroup", ".zarray", ".zattrs", "zarr.json")


def not_json_message(path: str, err: json.JSONDecodeError, storage_options: dict | None = None) -> str:
    """zarr's JSONDecodeError names no file: find the metadata file of `path` that is not JSON."""
    from cellmap_train.data.ngff import url_filesystem  # ngff imports this module

    try:
        fs, fs_path = url_filesystem(str(path), storage_options)
        for name in METADATA_FILES:
            try:
                json.loads(fs.cat_file(f"{fs_path.rstrip('/')}/{name}"))
            except FileNotFoundError:
                continue
            except ValueError:
                return f"{str(path).rstrip('/')}/{name}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except Exception:  # noqa: BLE001 - cannot look: name the folder
        pass
    return f"{path}: a metadata file ({', '.join(METADATA_FILES)}) is not valid JSON ({err.msg})"
