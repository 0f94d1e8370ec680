"""Open one scale level of an OME-NGFF multiscale group (local path or s3:// URL) and read
world-coordinate boxes from it, touching only the chunks the box covers.

World coordinates are nm, axes z/y/x; a level's `translation` is the centre of its voxel 0
(the CellMap convention: a 2x coarser level starts half a fine voxel further in).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import fsspec
import numpy as np
import zarr

from cellmap_train.data.bad_json import not_json_message
from cellmap_train.data.chunks import ChunkCache, ChunkReadError, chunk_coords, chunk_reader
from cellmap_train.data.label_encoding import LabelEncoding
from cellmap_train.errors import DataError

T, R = TypeVar("T"), TypeVar("R")


def _is_url(path: str) -> bool:
    return "://" in str(path)


def url_filesystem(url: str, storage_options: dict | None = None, asynchronous: bool = False):
    """(fsspec filesystem, path) for `url`. `storage_options.retries` is s3fs's own retry count
    (default 5, on top of botocore's `config_kwargs.retries`); s3fs takes it as an attribute, not
    an argument. Filesystems are cached per options, so one run should use one value."""
    options = dict(storage_options or {})
    retries = options.pop("retries", None)
    fs, fs_path = fsspec.core.url_to_fs(url, **options, **({"asynchronous": True} if asynchronous else {}))
    if retries is not None:
        fs.retries = int(retries)
    return fs, fs_path


def open_group(path: str, storage_options: dict | None = None) -> zarr.Group:
    """Open a zarr group read-only; `storage_options` go to fsspec for URLs (e.g. anon=True).
    CellMap groups are zarr v2 without consolidated metadata: asked for as such, opening one is
    two requests (.zgroup, .zattrs) instead of eight (zarr probes zarr.json and .zmetadata
    first); a v3 group is then found by zarr's own probing."""
    store: Any = str(path)
    try:
        if _is_url(path) and storage_options:
            fs, fs_path = url_filesystem(str(path), storage_options, asynchronous=True)
            store = zarr.storage.FsspecStore(fs, path=fs_path, read_only=True)
        try:
            return zarr.open_group(store, mode="r", zarr_format=2, use_consolidated=False)
        except FileNotFoundError:  # no .zgroup (GroupNotFoundError): let zarr look for any format
            return zarr.open_group(store, mode="r")
    except PermissionError as err:
        raise DataError(f"{path}: access denied ({err})") from err
    except (FileNotFoundError, KeyError) as err:  # zarr's GroupNotFoundError is a FileNotFoundError
        raise DataError(f"{path}: no zarr group there") from err
    except Exception as err:
        if type(err).__name__ in {"NodeNotFoundError", "ContainsArrayError", "NodeTypeValidationError"}:
            raise DataError(f"{path}: no zarr group there") from err
        if _unreachable(err):
            raise DataError(f"{path}: {unreachable_message(err)}") from err
        if isinstance(err, json.JSONDecodeError):
            raise DataError(not_json_message(path, err, storage_options)) from err
        raise


def _unreachable(err: BaseException) -> bool:
    """A connection refused / timed out (botocore's or the OS's), after the client's own retries.
    Only FileNotFoundError means "no such chunk" (read as fill value); these never do."""
    names = {cls.__name__ for cls in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(
        names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"})


def unreachable_message(err: BaseException) -> str:
    return (f"storage unreachable after its retries ({type(err).__name__}: {str(err).strip()[:200]}); the budget is "
            f"data.storage_options.config_kwargs (retries, connect_timeout, read_timeout) and data.storage_options.retries")


@dataclass(frozen=True)
class ArrayGeometry:
    """What a level with a chunk reader needs of its zarr array in a spawned worker."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class ScaleLevel:
    """One array of a multiscale pyramid with its voxel size and origin in world units (nm)."""

    array: Any  # zarr.Array (or anything with .shape and numpy-style slicing)
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    path: str
    encoding: LabelEncoding = LabelEncoding()
    reader: Any = None  # a chunks.ChunkReader, else reads go through zarr

    def __post_init__(self):  # numpy copies of the geometry, used on every read
        self._scale = np.asarray(self.scale, dtype=float)
        self._translation = np.asarray(self.translation, dtype=float)
        self._shape = np.asarray(self.array.shape, dtype=int)

    def __getstate__(self):
        """Pickled for a spawned worker: with a chunk reader (which makes its own filesystem
        there) the array is only its shape and dtype, so the worker reads without reopening it."""
        if self.reader is None:
            return self.__dict__
        return {**self.__dict__, "array": ArrayGeometry(tuple(self.array.shape), np.dtype(self.array.dtype))}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates of the low and high voxel *edges* (voxel centres sit at translation)."""
        low = self._translation - self._scale / 2
        return low, low + self._shape * self._scale

    def box_low(self, start: Sequence[int]) -> np.ndarray:
        """World coordinates of the low edge of voxel `start` (what `read` takes for a box)."""
        return self._translation + (np.asarray(start, dtype=float) - 0.5) * self._scale

    def voxel_index(self, world: Sequence[float]) -> np.ndarray:
        """Index of the voxel whose centre is nearest to the world point."""
        return np.round((np.asarray(world, dtype=float) - self._translation) / self._scale).astype(int)

    def read(self, world_low: Sequence[float], shape: Sequence[int], fill: float = 0,
             fetched: Mapping[str, Any] | None = None) -> np.ndarray:
        """Read `shape` voxels whose first voxel edge is at `world_low`; outside the array is `fill`.

        `world_low` is snapped to this level's voxel grid, so callers get exactly `shape` voxels.
        `fetched`: chunk files fetched beforehand (fetch_together).
        """
        dtype = np.result_type(self.array.dtype, np.float32) if np.isnan(fill) else self.array.dtype
        return self._read_box(world_low, shape, fill, dtype, lambda values: values, fetched)

    def read_labels(self, world_low: Sequence[float], shape: Sequence[int],
                    fetched: Mapping[str, Any] | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """float32 class values (0/1, NaN = unknown or outside the crop), written into `out` when
        given (a slot of the caller's stack of classes: no copy into it afterwards)."""
        return self._read_box(world_low, shape, np.nan, np.float32, self.encoding.decode, fetched, out)

    def _box(self, world_low, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First voxel of the box, and the low and high corners of its part inside the array."""
        start = self.voxel_index(np.asarray(world_low, dtype=float) + self._scale / 2)
        stop = start + np.asarray(shape, dtype=int)
        return start, np.maximum(start, 0), np.minimum(stop, self._shape)

    def remote_chunks(self, world_low: Sequence[float], shape: Sequence[int]) -> tuple[Any, list[str]]:
        """(filesystem, chunk files) that reading this box would request from object storage:
        none from a local disk or the cache."""
        _, src_lo, src_hi = self._box(world_low, shape)
        if self.reader is None or self.reader.local or np.any(src_hi <= src_lo):
            return None, []
        return self.reader.fs, self.reader.missing(tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi)))

    def inside(self, world_low: Sequence[float], shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]] | None:
        """The part of a box (`read`'s arguments) inside the array: the box voxel it starts at,
        and its voxels in the array (for `read_stored`); None when the box misses the array."""
        start, src_lo, src_hi = self._box(world_low, shape)
        if np.any(src_hi <= src_lo):
            return None
        return src_lo - start, tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))

    def read_stored(self, src: tuple[slice, ...], fetched: Mapping[str, Any] | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
        """The voxels `src` of the array (inside it) as stored, written into `out` when given."""
        try:
            if self.reader is not None:
                return self.reader.read(src, fetched, out)
            values = self.array[src]
        except ChunkReadError as err:
            raise DataError(self._describe_chunk_error(err)) from err
        except Exception as err:
            if _unreachable(err):  # the store, not the chunk, is at fault: no chunk-by-chunk probing
                raise DataError(f"{self._chunk_names(src)}: {unreachable_message(err)}") from err
            raise DataError(self._describe_read_error(src, err)) from err
        if out is None:
            return values
        out[...] = values
        return out

    def _read_box(self, world_low, shape, fill, dtype, convert, fetched=None, out=None) -> np.ndarray:
        """`convert(voxels)` of the part of the box inside the array, padded with `fill` (into
        `out` when given)."""
        start, src_lo, src_hi = self._box(world_low, shape)
        if np.any(src_hi <= src_lo):
            if out is not None:
                out.fill(fill)
                return out
            return np.full(tuple(shape), fill, dtype=dtype)
        src = tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
        values = convert(self.read_stored(src, fetched))
        inside = values.shape == tuple(shape)
        # all inside and a fresh array (not a view of someone's data): no padding copy
        if out is None and inside and values.dtype == dtype and values.base is None:
            return values
        if out is None:
            out = np.full(tuple(shape), fill, dtype=dtype)
        elif not inside:
            out.fill(fill)
        out[tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(src_lo, src_hi, start))] = values
        return out

    def _describe_chunk_error(self, err: ChunkReadError) -> str:
        where, cause = f"{self.path}/{err.key}", err.cause
        if _unreachable(cause):
            return f"{where}: {unreachable_message(cause)}"
        if isinstance(cause, PermissionError):
            return f"{where}: access denied ({cause})"
        return f"{where}: corrupt or unreadable chunk ({_reason(cause)})"

    def _chunk_names(self, src: tuple[slice, ...]) -> str:
        """`<path>/<key>` of the chunk a box covers, or `<path>/<first key>..<last key>`."""
        chunks = getattr(self.array, "chunks", None)
        if chunks is None or not hasattr(self.array, "metadata"):
            return self.path
        first = tuple(s.start // c for s, c in zip(src, chunks))
        last = tuple((s.stop - 1) // c for s, c in zip(src, chunks))
        keys = [self.array.metadata.encode_chunk_key(coords) for coords in dict.fromkeys((first, last))]
        return f"{self.path}/{'..'.join(keys)}"

    def _describe_read_error(self, src: tuple[slice, ...], err: Exception) -> str:
        """One line naming the chunk file that fails to decode (found by reading chunk by chunk)."""
        chunks = getattr(self.array, "chunks", None)
        if chunks is None:
            return f"{self.path}: cannot read voxels {src} ({_reason(err)})"
        for coords in chunk_coords(src, chunks):
            box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, self.shape))
            try:
                self.array[box]
            except Exception as chunk_err:
                key = self.array.metadata.encode_chunk_key(coords)
                return f"{self.path}/{key}: corrupt or unreadable chunk ({_reason(chunk_err)})"
        return f"{self.path}: cannot read voxels {src} ({_reason(err)})"


def _reason(err: BaseException) -> str:
    """`<ErrorType>: <first line of its message>`."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _transforms(entry: dict, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale, translation = None, None
    for transform in entry.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = tuple(float(v) for v in transform["scale"])
        elif transform.get("type") == "translation":
            translation = tuple(float(v) for v in transform["translation"])
    if scale is None:
        raise DataError(f"{where}: multiscale level has no scale transform")
    return scale, translation or (0.0,) * len(scale)


def level_transforms(group: zarr.Group, path: str) -> list[tuple[str, tuple[float, ...], tuple[float, ...]]]:
    """(level path, scale, translation) of every level of the group's first multiscale."""
    attrs = dict(group.attrs)
    attrs = attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs  # OME-NGFF 0.5 nests it
    try:
        datasets = attrs["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError) as err:
        raise DataError(f"{path}: no OME-NGFF 'multiscales' metadata in .zattrs") from err
    return [(entry.get("path"), *_transforms(entry, f"{path}/{entry.get('path')}")) for entry in datasets]


@contextmanager
def reachable(where: str) -> Iterator[None]:
    """Turn a storage outage inside the block into a DataError naming `where`."""
    try:
        yield
    except Exception as err:
        if _unreachable(err):
            raise DataError(f"{where}: {unreachable_message(err)}") from err
        raise


def fetch_together(reads: Sequence[tuple[ScaleLevel, Sequence[float], Sequence[int]]]) -> dict[str, Any]:
    """The object-storage chunk files of several reads (level, world_low, shape), fetched in one
    call per filesystem: the raw and every class of every sample of a batch are then one round
    of concurrent requests instead of one round per array, one after the other. Pass the result
    to each read as `fetched`. A file that failed maps to its error, which that read reports as
    usual."""
    by_fs: dict[int, tuple[Any, list[str]]] = {}
    for level, world_low, shape in reads:
        fs, files = level.remote_chunks(world_low, shape)
        if files:
            by_fs.setdefault(id(fs), (fs, []))[1].extend(files)
    fetched: dict[str, Any] = {}
    for fs, files in by_fs.values():
        try:
            fetched.update(fs.cat(list(dict.fromkeys(files)), on_error="return"))
        except Exception:  # noqa: BLE001 - each read then fetches its own files and says what failed, naming the chunk
            pass
    return fetched


def map_concurrently(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """`fn` of each item, in order, `threads` at a time. On S3 every metadata read is a round trip
    (opening a level is five in a row): hundreds of crops opened one after the other take minutes
    before the first step, at once they take seconds. The first error is raised once the calls
    already running have ended; the ones not yet started are dropped."""
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="open")
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def open_level_array(group: zarr.Group, path: str, name: str, storage_options: dict | None = None):
    """The array `name` of the multiscale group (its metadata is fetched here)."""
    try:
        with reachable(f"{path}/{name}"):
            return group[name]
    except (KeyError, FileNotFoundError) as err:
        raise DataError(f"{path}/{name}: listed in multiscales but missing") from err
    except json.JSONDecodeError as err:
        raise DataError(not_json_message(f"{path}/{name}", err, storage_options)) from err


def choose_level(scales: Sequence[Sequence[float]], wanted: Sequence[float]) -> int:
    """Which level to read for voxel size `wanted`: the coarsest that is nowhere coarser than
    it (so raw is never upsampled while a finer level exists), else the finest there is."""
    wanted_ = np.asarray(wanted, dtype=float)
    volumes = [float(np.prod(s)) for s in scales]
    fine_enough = [i for i, s in enumerate(scales) if np.all(np.asarray(s) <= wanted_ * (1 + 1e-6))]
    pool = fine_enough or range(len(scales))
    return (max if fine_enough else min)(pool, key=lambda i: volumes[i])


def open_level(path: str, scale: Sequence[float], storage_options: dict | None = None,
               cache: ChunkCache | None = None, group: zarr.Group | None = None) -> ScaleLevel:
    """The level of the multiscale group at `path` (`group`, when already open) to read samples
    of voxel size `scale` (nm, z/y/x) from (`choose_level`); samples are resampled from it. Its
    chunks are read with chunks.ChunkReader where it can (decoded chunks kept in `cache`)."""
    group = group if group is not None else open_group(path, storage_options)
    levels = level_transforms(group, path)
    wanted = tuple(float(s) for s in scale)
    if any(len(level_scale) != len(wanted) for _, level_scale, _ in levels):
        raise DataError(f"{path}: multiscales levels must have {len(wanted)} axes (z, y, x)")
    name, level_scale, translation = levels[choose_level([s for _, s, _ in levels], wanted)]
    array = open_level_array(group, path, name)
    if len(array.shape) != len(level_scale):
        raise DataError(f"{path}/{name}: array of shape {list(array.shape)} has {len(array.shape)} axes but its "
                        f"multiscales metadata has {len(level_scale)} (z, y, x)")
    # the s0 array carries the annotation attributes in the challenge data; the group may too
    first = open_level_array(group, path, levels[0][0]) if name != levels[0][0] else array
    check_extent(f"{path}/{name}", array.shape, level_scale, first.shape, levels[0][1])
    encoding = LabelEncoding.from_attrs(dict(array.attrs), dict(first.attrs), dict(group.attrs))
    fs, fs_path = url_filesystem(f"{path}/{name}", storage_options)
    return ScaleLevel(array, level_scale, translation, f"{path}/{name}", encoding, chunk_reader(array, fs, fs_path, cache))


def check_extent(where: str, shape, scale, first_shape, first_scale) -> None:
    """A level covers what the finest covers, give or take one of its voxels (pyramids round
    down): otherwise its scale in the metadata contradicts its array's shape."""
    extent, first = np.asarray(shape) * np.asarray(scale), np.asarray(first_shape) * np.asarray(first_scale)
    if np.any(np.abs(extent - first) > np.asarray(scale) * 1.01 + np.asarray(first_scale)):
        raise DataError(f"{where}: its multiscales scale {list(scale)} nm times its shape {list(shape)} covers "
                        f"{_nm_list(extent)} nm, but the finest level covers {_nm_list(first)} nm: the metadata "
                        f"contradicts the array")


def _nm_list(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def coarsest_level(path: str, storage_options: dict | None = None) -> ScaleLevel:
    """The last (coarsest) level: small enough to read whole, e.g. to count a class's voxels."""
    group = open_group(path, storage_options)
    return open_level(path, level_transforms(group, path)[-1][1], storage_options, group=group)
