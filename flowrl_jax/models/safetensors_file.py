"""Minimal safetensors reader/writer on numpy memmaps.

Why not `safetensors.numpy`: it cannot hand out bfloat16 (numpy has no such dtype) and loads whole
tensors. Here a tensor is a read-only memmap (ml_dtypes supplies bfloat16), so a loader can slice just
the rows one device needs, and the writer streams one tensor at a time.

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
then the raw little-endian data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("float64"),
    "F32": np.dtype("float32"),
    "F16": np.dtype("float16"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("int64"),
    "I32": np.dtype("int32"),
    "I16": np.dtype("int16"),
    "I8": np.dtype("int8"),
    "U8": np.dtype("uint8"),
    "BOOL": np.dtype("bool"),
}
_CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20


class SafetensorsFile:
    """Lazy view of one .safetensors file: `keys()`, `shape(k)`, `dtype(k)`, `get(k)` (a memmap)."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > _MAX_HEADER:
                    raise ValueError(f"header length {n}")
                self.header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
        self.header.pop("__metadata__", None)
        self._data_start = 8 + n
        size = os.path.getsize(path)
        for key, info in self.header.items():
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
            if self._data_start + info["data_offsets"][1] > size:
                raise ValueError(
                    f"{path} is truncated: tensor {key!r} runs past the end of the file"
                )

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.header[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return DTYPES[self.header[key]["dtype"]]

    def get(self, key: str) -> np.ndarray:
        info = self.header[key]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:
            return np.zeros(shape, self.dtype(key))
        return np.memmap(
            self.path, dtype=self.dtype(key), mode="r", offset=self._data_start + start, shape=shape
        )


def write(
    path: str,
    specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
    metadata: dict | None = None,
) -> None:
    """Write tensors named in `specs` (name, shape, dtype); `fetch(name)` is called once per tensor,
    in order, so only one tensor needs to be in host memory at a time."""
    specs = list(specs)
    header, offset = {}, 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": _CODES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the spec pads the header to 8-byte alignment with spaces
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(fetch(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name!r}: fetched shape {array.shape}, declared {shape}")
            f.write(array.tobytes())
