"""A GGUF file's header — metadata and tensor table — read without its tensor data.

``gguf.GGUFReader`` builds a numpy view for every value it parses: a model with a 32,000-token
vocabulary has about 100,000 of them and takes about 3 s on a small CPU, paid again by every check
of the same file (the deploy path validates, quantizes and benchmarks one file several times). The
tools need only the scalar metadata and the tensor table, so this reads those with ``struct`` from
one memory map, skips the contents of arrays (keeping their length and a numeric array's first
element), and caches the result per file version (path, size, times, inode). Layout as in
llama.cpp's ``gguf.cpp``: magic, version, tensor and key-value counts, the key-values, the tensor
infos, then the data at the next multiple of ``general.alignment``.
"""

from __future__ import annotations

import functools
import mmap
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from haqa.errors import HaqaError

_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
# GGUF value types (gguf.cpp's ``gguf_type``): struct code of each fixed-size one.
_SCALAR = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


class GgufArray(BaseModel):
    """An array value: its element type and length (the contents are skipped)."""

    model_config = ConfigDict(frozen=True)

    element_type: int
    length: int
    first: int | float | None = Field(None, description="the first element of a numeric array")


Scalar = int | float | bool | str


class GgufTensorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...] = Field(description="ne0 first, as ggml orders dimensions")
    ggml_type: str = Field(description="ggml type name, e.g. Q4_K")
    data_offset: int = Field(description="absolute offset of the tensor's bytes in the file")
    n_elements: int
    n_bytes: int


class GgufHeader(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path
    version: int
    size_bytes: int
    fields: dict[str, Scalar | GgufArray]
    tensors: tuple[GgufTensorInfo, ...]

    def int_field(self, key: str, *, first_of_array: bool = False) -> int | None:
        """An integer field; with ``first_of_array``, a per-layer array's first element."""
        value = self.fields.get(key)
        if first_of_array and isinstance(value, GgufArray):
            value = value.first
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def str_field(self, key: str) -> str | None:
        value = self.fields.get(key)
        return value if isinstance(value, str) else None

    @property
    def data_end(self) -> int:
        """Where the last tensor's bytes end: past the file's size means a truncated file."""
        return max((t.data_offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    def __init__(self, buf: mmap.mmap, endian: str) -> None:
        self.buf, self.endian, self.pos = buf, endian, 0

    def take(self, code: str) -> int | float | bool:
        fmt = self.endian + code
        value: int | float | bool = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("value runs past the end of the file")
        self.pos += n

    def string(self) -> str:
        n = int(self.take("Q"))
        start = self.pos
        self.skip(n)
        return self.buf[start : self.pos].decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Scalar | GgufArray:
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            element_type, length = int(self.take("I")), int(self.take("Q"))
            first: int | float | None = None
            if element_type in _SCALAR:
                code = self.endian + _SCALAR[element_type]
                if length:
                    first = struct.unpack_from(code, self.buf, self.pos)[0]
                self.skip(length * struct.calcsize(code))
            elif element_type == _STRING:
                if length > (len(self.buf) - self.pos) // 8:  # each string has a length field
                    raise ValueError(f"array of {length} strings runs past the end of the file")
                for _ in range(length):
                    self.skip(int(self.take("Q")))
            else:  # nested arrays: llama.cpp writes none
                raise ValueError(f"array of value type {element_type}")
            return GgufArray(element_type=element_type, length=length, first=first)
        raise ValueError(f"unknown value type {vtype}")


def _tensor_bytes(type_id: int, n_elements: int) -> tuple[str, int]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise ValueError(f"unknown ggml type {type_id}") from None
    block, type_size = GGML_QUANT_SIZES[qtype]
    return qtype.name, n_elements // block * type_size


def _parse(path: Path, size: int) -> GgufHeader:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError("bad magic")
        # The version is 1..3 in the writer's byte order: a huge value means the other order.
        endian = "<" if struct.unpack_from("<I", buf, 4)[0] < 0x10000 else ">"
        cur = _Cursor(buf, endian)
        cur.pos = 4
        version = int(cur.take("I"))
        if not 2 <= version <= 3:
            raise ValueError(f"GGUF version {version} (llama.cpp reads 2 and 3)")
        n_tensors, n_kv = int(cur.take("Q")), int(cur.take("Q"))
        # Counts a corrupt file could make huge: each entry takes at least 12 (a key-value) or
        # 24 (a tensor info) bytes, so more than the file holds fails here, not after a long loop.
        if n_kv * 12 + n_tensors * 24 > len(buf) - cur.pos:
            raise ValueError(f"{n_kv} key-values and {n_tensors} tensors do not fit in the file")
        fields: dict[str, Scalar | GgufArray] = {}
        for _ in range(n_kv):
            key = cur.string()
            if key in fields:
                raise ValueError(f"duplicate key {key}")
            fields[key] = cur.value(int(cur.take("I")))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = int(cur.take("I"))
            if not 1 <= n_dims <= _MAX_DIMS:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            shape = tuple(int(cur.take("Q")) for _ in range(n_dims))
            type_id, offset = int(cur.take("I")), int(cur.take("Q"))
            infos.append((name, shape, type_id, offset))
        if len({info[0] for info in infos}) != len(infos):
            raise ValueError("duplicate tensor names")
        alignment = fields.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r}")
        data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, shape, type_id, offset in infos:
        n_elements = 1
        for dim in shape:
            n_elements *= dim
        type_name, n_bytes = _tensor_bytes(type_id, n_elements)
        tensors.append(
            GgufTensorInfo(
                name=name,
                shape=shape,
                ggml_type=type_name,
                data_offset=data_start + offset,
                n_elements=n_elements,
                n_bytes=n_bytes,
            )
        )
    return GgufHeader(
        path=path, version=version, size_bytes=size, fields=fields, tensors=tuple(tensors)
    )


@functools.lru_cache(maxsize=64)
def _cached(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> GgufHeader:
    # Size, both times and the inode: a file rewritten in place or replaced by a rename within
    # one timestamp tick still changes one of them.
    return _parse(Path(path), size)


def read_gguf_header(path: Path) -> GgufHeader:
    """The header of a GGUF file; a one-line HaqaError when it is missing, not a GGUF, or cut off
    inside its header. (Cut-off tensor data shows as ``data_end > size_bytes``.)"""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise HaqaError(f"{path} does not exist: pass a .gguf file") from None
    if not path.is_file():
        raise HaqaError(f"{path} is not a file: pass a .gguf file")
    try:
        return _cached(
            str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino
        )
    except (ValueError, struct.error, OSError) as exc:
        raise HaqaError(f"{path} is a truncated or corrupt GGUF ({exc}): re-export it") from None


class WeightMix(BaseModel):
    """What a GGUF's weights actually are, from its header: the mix of tensor types, the effective
    bits per weight, and how much of the file type's base type fell back to another because its
    rows do not divide into the base type's blocks (a hidden size of 576 is not a multiple of the
    K-quants' 256, so on such a model most of a Q2_K file is Q4_0)."""

    model_config = ConfigDict(frozen=True)

    file_type: str | None = Field(None, description="llama.cpp file type (general.file_type)")
    bits_per_weight: float = Field(description="8 x tensor bytes / parameters, all tensors")
    type_share: dict[str, float] = Field(
        description="share of the matrix weights (2-D tensors) stored in each ggml type"
    )
    fallback_share: float = Field(
        0.0,
        description="share of the matrix weights whose rows do not fit the file type's base "
        "type's blocks, so llama.cpp stored them in a fallback type",
    )

    def summary(self) -> str:
        """One line: 'Q2_K, 4.21 bits/weight: Q4_0 61%, Q2_K 27%, Q6_K 12% (61% fell back)'."""
        mix = ", ".join(
            f"{t} {share:.0%}"
            for t, share in sorted(self.type_share.items(), key=lambda kv: -kv[1])
            if share >= 0.005
        )
        head = f"{self.file_type or 'GGUF'}, {self.bits_per_weight:.2f} bits/weight"
        fell = (
            f" ({self.fallback_share:.0%} fell back from the base type)"
            if self.fallback_share
            else ""
        )
        return f"{head}: {mix}{fell}"


def weight_mix(path: Path) -> WeightMix:
    """The tensor-type mix and effective bits of a GGUF file (header only)."""
    from haqa.quant import BLOCK, FTYPE_BASE, FTYPE_IDS

    header = read_gguf_header(path)
    ftype_id = header.int_field("general.file_type")
    file_type = FTYPE_IDS.get(ftype_id) if ftype_id is not None else None
    base = FTYPE_BASE.get(file_type or "")
    block = BLOCK.get(base or "", (1, 0))[0]
    matrices = [t for t in header.tensors if len([d for d in t.shape if d > 1]) >= 2]
    total = sum(t.n_elements for t in matrices) or 1
    share: dict[str, float] = {}
    fell = 0
    for t in matrices:
        share[t.ggml_type] = share.get(t.ggml_type, 0.0) + t.n_elements / total
        if base and t.shape[0] % block != 0 and t.ggml_type != base:
            fell += t.n_elements
    n_params = sum(t.n_elements for t in header.tensors) or 1
    return WeightMix(
        file_type=file_type,
        bits_per_weight=8.0 * sum(t.n_bytes for t in header.tensors) / n_params,
        type_share=share,
        fallback_share=fell / total,
    )
