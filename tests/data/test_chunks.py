"""The direct zarr v2 chunk reader and the decoded-chunk cache, against zarr's own reads of the
same arrays on disk: every box equal, missing chunks as fill value, bad chunks named."""

from __future__ import annotations

import pickle

import fsspec
import numcodecs
import numpy as np
import pytest
import zarr

from cellmap_train.data.chunks import ChunkCache, ChunkReadError, chunk_reader
from cellmap_train.errors import ConfigError


def v2_array(path, data, chunks, **kwargs):
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=2, **kwargs)
    array[...] = data
    return zarr.open_array(str(path), mode="r")


def reader_for(array, path, cache=None):
    fs, fs_path = fsspec.core.url_to_fs(str(path))
    return chunk_reader(array, fs, fs_path, cache)


def random_boxes(shape, rng, count=40):
    for _ in range(count):
        start = [int(rng.integers(0, n)) for n in shape]
        yield tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(start, shape))


@pytest.mark.parametrize("dtype, kwargs", [
    (np.uint8, {}),
    (np.uint16, {"compressors": [{"id": "zstd", "level": 3}]}),
    (np.float32, {"filters": [numcodecs.Shuffle(elementsize=4)], "compressors": None}),
    (np.int32, {"filters": [numcodecs.Delta(dtype="<i4")]}),
    (np.dtype(">u2"), {}),  # big-endian bytes on disk
    (np.int64, {"chunk_key_encoding": {"name": "v2", "separator": "/"}}),
    (np.uint16, {"compressors": None}),  # raw chunk bytes
])
@pytest.mark.parametrize("cached_chunks", [0, 3])  # 3: chunks are dropped and their buffers reused within one read
def test_every_box_equals_zarrs_read(tmp_path, dtype, kwargs, cached_chunks):
    rng = np.random.default_rng(0)
    data = (rng.random((23, 17, 30)) * 200).astype(dtype)  # edge chunks on every axis
    array = v2_array(tmp_path / "a", data, (8, 8, 8), **kwargs)
    cache = ChunkCache(cached_chunks * 8**3 * np.dtype(dtype).itemsize / 2**20)
    reader = reader_for(array, tmp_path / "a", cache)
    assert reader is not None
    for box in random_boxes(data.shape, rng):
        np.testing.assert_array_equal(reader.read(box), array[box])
        np.testing.assert_array_equal(reader.read(box), data[box])


def test_missing_chunks_read_as_the_fill_value(tmp_path):
    array = zarr.create_array(str(tmp_path / "a"), shape=(16, 16, 16), chunks=(8, 8, 8), dtype=np.uint8,
                              fill_value=7, zarr_format=2)
    array[:8, :8, :8] = 1  # one chunk written, seven never
    array = zarr.open_array(str(tmp_path / "a"), mode="r")
    out = reader_for(array, tmp_path / "a").read((slice(4, 12), slice(0, 16), slice(0, 16)))
    np.testing.assert_array_equal(out, array[4:12])
    assert out[0, 0, 0] == 1 and out[-1, -1, -1] == 7


def test_missing_chunks_cost_the_cache_one_value_each(tmp_path):
    array = zarr.create_array(str(tmp_path / "a"), shape=(16, 16, 16), chunks=(8, 8, 8), dtype=np.uint16,
                              fill_value=3, zarr_format=2)
    array[:8, :8, :8] = 1
    array = zarr.open_array(str(tmp_path / "a"), mode="r")
    cache = ChunkCache(1)
    reader = reader_for(array, tmp_path / "a", cache)
    for _ in range(2):  # the second read comes from the cache
        np.testing.assert_array_equal(reader.read((slice(0, 16),) * 3), array[...])
    assert (cache.misses, cache.hits) == (8, 8)
    assert cache.bytes == 8**3 * 2 + 7 * 2  # one real chunk, seven broadcast fill values


def test_scratch_memory_does_not_grow_with_the_number_of_arrays(tmp_path):
    cache = ChunkCache(0)  # off: what every crop's readers of one process share
    rng = np.random.default_rng(1)
    for k in range(12):  # e.g. 3 crops x 4 arrays
        data = rng.integers(0, 255, (16, 16, 16), dtype=np.uint8)
        array = v2_array(tmp_path / f"a{k}", data, (8, 8, 8))
        np.testing.assert_array_equal(reader_for(array, tmp_path / f"a{k}", cache).read((slice(3, 13),) * 3), data[3:13, 3:13, 3:13])
    largest_file = max(f.stat().st_size for f in tmp_path.glob("a*/*.*.*"))
    assert sum(a.nbytes for spares in cache._spares.values() for a in spares) <= ChunkCache.SPARES_PER_SHAPE * 8**3
    assert len(cache._file_buffer) == largest_file


def test_a_corrupt_chunk_is_named(tmp_path):
    array = v2_array(tmp_path / "a", np.ones((16, 16, 16), np.uint8), (8, 8, 8))
    (tmp_path / "a" / "1.0.1").write_bytes(b"\x00garbage")
    reader = reader_for(array, tmp_path / "a")
    with pytest.raises(ChunkReadError) as caught:
        reader.read((slice(0, 16), slice(0, 8), slice(0, 16)))
    assert caught.value.key == "1.0.1"


def test_arrays_it_cannot_read_exactly_go_through_zarr(tmp_path):
    sharded = zarr.create_array(str(tmp_path / "v3"), shape=(8, 8), chunks=(2, 2), shards=(4, 4), dtype=np.uint8,
                                zarr_format=3)
    checksummed = zarr.create_array(str(tmp_path / "crc"), shape=(8, 8), chunks=(4, 4), dtype=np.uint8, zarr_format=3,
                                    compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
    fortran = zarr.create_array(str(tmp_path / "f"), shape=(8, 8), chunks=(4, 4), dtype=np.uint8, zarr_format=2, order="F")
    assert reader_for(sharded, tmp_path / "v3") is None
    assert reader_for(checksummed, tmp_path / "crc") is None
    assert reader_for(fortran, tmp_path / "f") is None
    plain_v3 = zarr.create_array(str(tmp_path / "p"), shape=(8, 8), chunks=(4, 4), dtype=np.uint16, zarr_format=3)
    assert reader_for(plain_v3, tmp_path / "p") is not None  # bytes + zstd: read directly


def test_cache_serves_repeated_reads_within_its_budget(tmp_path):
    data = np.arange(32**3, dtype=np.uint8).reshape(32, 32, 32)
    array = v2_array(tmp_path / "a", data, (8, 8, 8))  # 512-byte chunks
    cache = ChunkCache(max_mb=4 * 512 / 2**20)  # room for four chunks
    reader = reader_for(array, tmp_path / "a", cache)
    box = (slice(0, 16), slice(0, 16), slice(0, 8))  # four chunks
    first = reader.read(box)
    assert (cache.hits, cache.misses, cache.bytes) == (0, 4, 2048)
    chunk_file = tmp_path / "a" / "0.0.0"
    original = chunk_file.read_bytes()
    chunk_file.write_bytes(b"\x00garbage")  # served from the cache, never read again
    np.testing.assert_array_equal(reader.read(box), first)
    assert cache.hits == 4
    chunk_file.write_bytes(original)
    reader.read((slice(16, 24), slice(0, 8), slice(0, 8)))  # a fifth chunk evicts the least recent
    assert cache.bytes == 2048 and len(cache._chunks) == 4
    out = reader.read(box)
    out[...] = 0  # callers get copies; the cached chunks stay as read
    np.testing.assert_array_equal(reader.read((slice(0, 8), slice(8, 16), slice(0, 8))), data[:8, 8:16, :8])


def test_cache_off_and_in_a_new_process(tmp_path):
    array = v2_array(tmp_path / "a", np.ones((8, 8, 8), np.uint8), (8, 8, 8))
    off = ChunkCache(0)
    reader_for(array, tmp_path / "a", off).read((slice(0, 8),) * 3)
    assert off.bytes == 0
    cache = ChunkCache(1)
    reader_for(array, tmp_path / "a", cache).read((slice(0, 8),) * 3)
    copy = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker gets
    assert (copy.max_bytes, copy.bytes, len(copy._chunks)) == (2**20, 0, 0)
    for bad in (-1, "abc"):
        with pytest.raises(ConfigError, match=f"data.chunk_cache_mb={bad!r}: must be a number"):
            ChunkCache(bad)
