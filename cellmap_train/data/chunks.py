"""Reading boxes of zarr v2 arrays (the CellMap format) and of plain zarr v3 ones chunk by chunk,
with an optional bounded cache of decoded chunks.

Why not `array[box]`: zarr 3's read pipeline costs about 1 ms per call plus 0.4 ms per chunk on
top of decoding (0.2 ms for a 64^3 uint8 blosc chunk), which made a 2D sample (4 arrays x 4
chunks) read-bound. Here the chunk files of a box are fetched in one fsspec call on S3 (the
requests run concurrently) or read as plain files locally, and decoded with the array's own
numcodecs codecs. Arrays this cannot read exactly (F order, object dtypes, zarr v3 with sharding,
transposes, crc32c or another compressor than zstd/gzip/blosc) keep going through zarr.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numcodecs
import numpy as np
from numcodecs.compat import ensure_contiguous_ndarray

from cellmap_train.errors import ConfigError


class ChunkCache:
    """Least-recently-used decoded chunks of one process, at most `max_mb` MiB in all.
    Random crops come back to the same chunks often (a 64^3 chunk holds 64 z-slices), so a
    cache the size of the working set turns most reads into copies. 0 disables it. A worker
    process starts with an empty cache of the same budget: a spawned one unpickles an empty
    cache, a forked one inherits the main process's, which is empty because with workers the
    main process reads no samples.

    It also owns the process's scratch memory for reading, shared by every array's reader so
    that it does not grow with the number of crops: the buffers chunks are decoded into (the
    ones it drops are reused: a fresh 256 KiB array costs its page faults on first write, which
    made decoding 2-3x slower than the decompression itself, 45 vs 130 us for a 64^3 uint8
    chunk) and the one buffer chunk files are read into."""

    SPARES_PER_SHAPE = 4

    def __init__(self, max_mb: float = 0):
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or max_mb < 0:
            raise ConfigError(f"data.chunk_cache_mb={max_mb!r}: must be a number of MiB >= 0 (0 turns the cache off)")
        self.max_bytes = int(max_mb * 2**20)
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._spares: dict[tuple, list[np.ndarray]] = {}
        self._file_buffer = bytearray()
        self.bytes = self.hits = self.misses = 0

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"] / 2**20)

    def __contains__(self, key: tuple) -> bool:  # no hit or miss counted
        return key in self._chunks

    def get(self, key: tuple) -> np.ndarray | None:
        chunk = self._chunks.get(key)
        if chunk is None:
            self.misses += 1
            return None
        self._chunks.move_to_end(key)
        self.hits += 1
        return chunk

    def put(self, key: tuple, chunk: np.ndarray) -> None:
        """Keep `chunk` (callers must not use it after a later put: it may be recycled)."""
        size = held_bytes(chunk)
        if size > self.max_bytes:
            self._recycle(chunk)
            return
        chunk.flags.writeable = False  # shared by every later read: nobody may change it
        self._chunks[key] = chunk
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._chunks.popitem(last=False)
            self.bytes -= held_bytes(dropped)
            self._recycle(dropped)

    def buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A writable array to decode one chunk into: a dropped chunk's if one fits."""
        spares = self._spares.get((shape, dtype.str))
        return spares.pop() if spares else np.empty(shape, dtype=dtype)

    def file_buffer(self, size: int) -> memoryview:
        """`size` bytes to read one chunk file into, valid until the next call."""
        if len(self._file_buffer) < size:
            self._file_buffer = bytearray(size)  # a new one: the old may still be viewed, so never resized
        return memoryview(self._file_buffer)[:size]

    def _recycle(self, chunk: np.ndarray) -> None:
        if not (chunk.flags.owndata and chunk.flags.c_contiguous):  # a view: its memory is not ours to reuse
            return
        spares = self._spares.setdefault((chunk.shape, chunk.dtype.str), [])
        if len(spares) < self.SPARES_PER_SHAPE:
            chunk.flags.writeable = True
            spares.append(chunk)


def held_bytes(chunk: np.ndarray) -> int:
    """Memory a chunk holds: a broadcast fill value (stride 0) holds one element."""
    return chunk.itemsize if 0 in chunk.strides else chunk.nbytes


def chunk_range(s: slice, n: int) -> range:
    """Indices of the chunks of size `n` that the span `s` touches along one axis."""
    return range(s.start // n, (s.stop - 1) // n + 1)


def chunk_coords(src: tuple[slice, ...], chunks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Grid coordinates of every chunk the box `src` touches."""
    return list(itertools.product(*(chunk_range(s, c) for s, c in zip(src, chunks))))


@dataclass(frozen=True)
class ChunkLayout:
    """What reading an array's chunk files takes, from its zarr v2 or v3 metadata."""

    chunks: tuple[int, ...]
    fill_value: Any
    filters: tuple  # numcodecs codecs applied after the compressor, in the order written
    compressor: Any  # a numcodecs codec, or None
    encode_key: Callable[[tuple[int, ...]], str]  # grid coordinates -> the chunk's name in the array


# zarr v3 compressors (bytes -> bytes codecs) whose files numcodecs decodes as zarr does
V3_COMPRESSORS = {"zstd": numcodecs.Zstd, "gzip": numcodecs.GZip, "blosc": numcodecs.Blosc}


def chunk_layout(meta: Any, dtype: np.dtype) -> ChunkLayout | None:
    """The layout of v2 arrays in C order, and of v3 arrays of the common kind: a regular grid,
    `bytes` in this machine's byte order (or one-byte values), then at most one of
    V3_COMPRESSORS (any chunk key encoding). None for the rest (read through zarr)."""
    kind = type(meta).__name__
    if kind == "ArrayV2Metadata":
        if meta.order != "C":
            return None
        return ChunkLayout(tuple(meta.chunks), meta.fill_value, tuple(meta.filters or ()), meta.compressor,
                           meta.encode_chunk_key)
    if kind != "ArrayV3Metadata" or type(meta.chunk_grid).__name__ != "RegularChunkGrid" or meta.storage_transformers:
        return None
    first, *rest = meta.codecs
    endian = getattr(getattr(first, "endian", None), "value", None)
    if type(first).__name__ != "BytesCodec" or len(rest) > 1 or (dtype.itemsize > 1 and endian != sys.byteorder):
        return None
    compressor = None
    if rest:
        codec = V3_COMPRESSORS.get(rest[0].to_dict().get("name"))
        if codec is None:
            return None
        compressor = codec()  # decoding needs none of the settings the file was written with
    return ChunkLayout(tuple(meta.chunk_grid.chunk_shape), meta.fill_value, (), compressor, meta.encode_chunk_key)


def chunk_reader(array: Any, fs, fs_path: str, cache: ChunkCache | None):
    """A ChunkReader for arrays it reads exactly, else None (read through zarr)."""
    dtype = np.dtype(array.dtype)
    if dtype.hasobject or dtype.kind not in "biuf":
        return None
    layout = chunk_layout(getattr(array, "metadata", None), dtype)
    return None if layout is None else ChunkReader(array, fs, fs_path, cache, layout)


class ChunkReader:
    def __init__(self, array: Any, fs, fs_path: str, cache: ChunkCache | None, layout: ChunkLayout):
        self.chunks = layout.chunks
        self.dtype = np.dtype(array.dtype)
        self.chunk_bytes = math.prod(self.chunks) * self.dtype.itemsize  # what every decode must yield
        self.fill = np.array(0 if layout.fill_value is None else layout.fill_value).astype(self.dtype)
        self.filters = list(layout.filters)
        self.compressor = layout.compressor
        self._decoded_size = DECODED_SIZE.get(getattr(self.compressor, "codec_id", None))
        self.encode_key = layout.encode_key
        self.fs_path = fs_path.rstrip("/")
        self._fs, self._pid = fs, os.getpid()
        self._retries = vars(fs).get("retries")  # s3fs takes it as an attribute (ngff.url_filesystem)
        # fsspec's local cat costs ~0.15 ms per file over a plain read: 2 ms of a 2D sample
        self.local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.cache = cache if cache is not None else ChunkCache(0)  # with 0 MiB: only the scratch buffers

    @property
    def fs(self):
        """The filesystem, made anew in each worker process from the same arguments (no
        request): fsspec's async filesystems (s3fs) cannot be used across a fork. So a worker
        reads chunks at once instead of reopening every level's metadata first (five requests
        a level on S3)."""
        if self._pid != os.getpid():
            self._fs, self._pid = type(self._fs)(*self._fs.storage_args, **self._fs.storage_options), os.getpid()
            if self._retries is not None:
                self._fs.retries = self._retries
        return self._fs

    def __getstate__(self):  # fsspec pickles a filesystem as its arguments
        return {**self.__dict__, "_pid": None}

    def chunk_path(self, coords: tuple[int, ...]) -> str:
        return f"{self.fs_path}/{self.encode_key(coords)}"

    def missing(self, src: tuple[slice, ...]) -> list[str]:
        """The files of the chunks of box `src` that are not in the cache: what reading it fetches."""
        return [self.chunk_path(coords) for coords in chunk_coords(src, self.chunks) if (self.fs_path, coords) not in self.cache]

    def read(self, src: tuple[slice, ...], fetched: Mapping[str, Any] | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """The voxels of box `src` (inside the array), written into `out` when given (a slot of
        the caller's array: no copy afterwards). Raises ChunkReadError naming the chunk.
        `fetched`: chunk files already fetched (path -> bytes or the error), e.g. by
        ngff.fetch_together; the others are fetched here."""
        # per axis: (chunk index, where its part lands in the box, which part of the chunk)
        axes = [[(i, slice(max(s.start, i * n) - s.start, min(s.stop, (i + 1) * n) - s.start),
                  slice(max(s.start, i * n) - i * n, min(s.stop, (i + 1) * n) - i * n))
                 for i in chunk_range(s, n)] for s, n in zip(src, self.chunks)]
        out = np.empty(tuple(s.stop - s.start for s in src), dtype=self.dtype) if out is None else out
        missing = []
        for coords, dst, part in (tuple(zip(*combo)) for combo in itertools.product(*axes)):
            chunk = self.cache.get((self.fs_path, coords))
            if chunk is None:
                missing.append((coords, dst, part))
            else:
                out[dst] = chunk[part]
        # each chunk's part is copied out before the next put, which may recycle earlier chunks
        for (coords, dst, part), data in zip(missing, self.fetch([self.chunk_path(c) for c, _, _ in missing], fetched)):
            chunk = self.decode(coords, data)
            out[dst] = chunk[part]
            self.cache.put((self.fs_path, coords), chunk)
        return out

    def fetch(self, paths: list[str], fetched: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Each chunk file's bytes in order, or the exception reading it raised, taken from
        `fetched` where it is there. Local files are read one at a time into the process's file
        buffer (valid until the next item is taken)."""
        if not self.local:
            fetched = fetched or {}
            rest = [path for path in paths if path not in fetched]
            more = self.fs.cat(rest, on_error="return") if rest else {}  # S3: all requests at once
            yield from (fetched[path] if path in fetched else more[path] for path in paths)
            return
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as handle:
                    view = self.cache.file_buffer(os.fstat(handle.fileno()).st_size)
                    got = handle.readinto(view)
            except OSError as err:
                yield err
                continue
            yield view[:got]

    def decode(self, coords: tuple[int, ...], data) -> np.ndarray:
        """The chunk at `coords` from its file's bytes (or the error fetching it raised). Every
        decode yields exactly the chunk's byte count or raises ChunkReadError: the buffer it
        goes into is a reused one, so a short decode would leave another chunk's voxels in it."""
        if isinstance(data, FileNotFoundError):  # never written: the fill value, as zarr reads it
            return np.broadcast_to(self.fill, self.chunks)
        if isinstance(data, BaseException):
            raise ChunkReadError(self.encode_key(coords), data)
        try:
            if len(data) == 0:  # what an interrupted download leaves; zarr refuses it whatever the codec
                raise self.size_error(0, "the file is empty")
            return self._decode_filtered(data) if self.filters else self._decode_into_buffer(data)
        except Exception as err:
            raise ChunkReadError(self.encode_key(coords), err) from err

    def _decode_into_buffer(self, data) -> np.ndarray:
        chunk = self.cache.buffer(self.chunks, self.dtype)
        if self.compressor is None:
            decoded = data
        else:
            size = self._decoded_size(data) if self._decoded_size else None
            if size is None:  # the codec's output size is unknown until decoded: measure it
                decoded = self.compressor.decode(data)
            else:  # the header says what `out` gets: check before, as the codec fills only that much
                if size != chunk.nbytes:
                    raise self.size_error(size)
                decoded = self.compressor.decode(data, out=chunk)
        flat = np.frombuffer(decoded, dtype=np.uint8)
        if not np.may_share_memory(flat, chunk):  # raw bytes, or a codec that ignored `out`
            if flat.size != chunk.nbytes:
                raise self.size_error(flat.size)
            chunk.reshape(-1).view(np.uint8)[:] = flat
        return chunk

    def _decode_filtered(self, data) -> np.ndarray:
        """Rare in CellMap data; copied so nothing points into the reused file buffer."""
        if self.compressor is not None:
            data = self.compressor.decode(data)
        for codec in reversed(self.filters):
            data = codec.decode(data)
        flat = ensure_contiguous_ndarray(data).view(np.uint8)
        if flat.size != self.chunk_bytes:
            raise self.size_error(flat.size)
        return flat.view(self.dtype).reshape(self.chunks).copy()

    def size_error(self, got: int, what: str = "") -> ValueError:
        """Why a chunk that decodes to `got` bytes is refused, naming the chunk expected."""
        expected = f"expected {self.chunk_bytes} bytes ({self.dtype} {'x'.join(map(str, self.chunks))})"
        if what:
            return ValueError(f"{what}, {expected}: an interrupted download?")
        hint = "a truncated file, or " if got < self.chunk_bytes else ""
        return ValueError(f"decodes to {got} bytes, {expected}: {hint}a .zarray dtype or chunks other than the ones written?")


BLOSC_HEADER = struct.Struct("<4xI4xI")  # version, versionlz, flags, typesize; nbytes, blocksize, cbytes


def blosc_decoded_size(data) -> int:
    """The bytes blosc will decode `data` into, from its header. A header whose compressed size
    exceeds the file is refused: blosc would read past the file's end (the reused file buffer
    holds another chunk's bytes there) and zarr then returns whatever it found."""
    if len(data) < BLOSC_HEADER.size:
        raise ValueError(f"{len(data)} bytes, shorter than a blosc header ({BLOSC_HEADER.size}): a truncated file?")
    nbytes, cbytes = BLOSC_HEADER.unpack_from(data)
    if cbytes > len(data):
        raise ValueError(f"the blosc header says {cbytes} compressed bytes, the file has {len(data)}: a truncated file?")
    return nbytes


def zstd_content_size(data) -> int | None:
    """Frame_Content_Size of a zstd frame (RFC 8878 3.1.1.1), None if absent or not a frame."""
    if len(data) < 6 or bytes(data[:4]) != b"\x28\xb5\x2f\xfd":
        return None  # skippable frames and garbage: left to the codec, measured
    descriptor = data[4]
    single_segment = descriptor >> 5 & 1
    field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (not single_segment) + (0, 1, 2, 4)[descriptor & 3]  # window byte, dictionary id
    if field == 0 or len(data) < start + field:
        return None
    return int.from_bytes(data[start:start + field], "little") + (256 if field == 2 else 0)


# codecs that fill only as much of `out` as their header says: checked before decoding into it
DECODED_SIZE = {"blosc": blosc_decoded_size, "zstd": zstd_content_size}


class ChunkReadError(Exception):
    """A chunk that could not be fetched or decoded; `key` is its name inside the array."""

    def __init__(self, key: str, cause: BaseException):
        super().__init__(f"{key}: {type(cause).__name__}: {cause}")
        self.key, self.cause = key, cause
