"""``manifest.json``, the contract between a build and everything that injects faults: its typed
model and its one loader.

Why here, in the lowest package: the build writes it (flows/manifest.py), the simulation side
injects through it (hw_sim/), and the software fault model maps its memories to weights
(mcel_train/memory.py, mcel_train/intnet_finn.py). One model, validated once on load, so a
truncated, hand-edited or older manifest is refused with one line naming the file and the field,
before any work starts.

Paths inside (``top_file``, ``filelist``, every ``init_file``) are relative to the build folder,
so a build can be moved or copied; :meth:`Manifest.resolve` turns them into paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcel_train.errors import ArtifactError
from mcel_train.memory import Memory, MemoryLayoutError, decode_mvau, finn_mvau_memory, read_words

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 2  # 2: paths relative to the build folder


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AxiLiteMap(BaseModel):
    """Byte address map of a weight memory's AXI-lite port (FINN's memstream)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    words_per_line: int
    data_words: int
    addr_bits: int
    exposed_at_top: bool = False
    prefix: str | None = None
    readahead_lines: int = 0
    flush_images: int = 1


class MemoryEntry(_Strict):
    """One on-chip memory that can hold faults; ``layout`` maps its (word, bit) to tensor elements
    (the layout types are documented in mcel_train/memory.py)."""

    name: str
    layer: str
    kind: Literal["weights", "thresholds"]
    path: str = Field(description="hierarchical path of the memory array in the RTL")
    depth: int = Field(gt=0)
    width: int = Field(gt=0)
    data_bits: int = Field(gt=0)
    element_bits: int = Field(gt=0)
    datatype: str
    signed: bool
    bipolar: bool
    pe: int = Field(gt=0)
    simd: int | None = None
    layout: dict[str, Any]
    init_file: str = Field(description="relative to the build folder")
    instance: str
    init_param: str
    axilite: AxiLiteMap | None = None


class StreamFormatSpec(BaseModel):
    """Width, packing and datatype of the accelerator's input or output stream."""

    model_config = ConfigDict(extra="allow", frozen=True)
    tdata_bits: int = Field(gt=0)
    datatype: str
    element_bits: int = Field(gt=0)
    elements: int = Field(gt=0)
    elements_per_beat: int = Field(gt=0)
    beats_per_image: int = Field(gt=0)
    shape: list[int]
    kind: str | None = None


class Streams(_Strict):
    input: StreamFormatSpec
    output: StreamFormatSpec


class AxiLitePort(_Strict):
    prefix: str
    addr_width: int
    data_width: int = 32
    memory: str
    layer: str


class Manifest(BaseModel):
    """The whole manifest; ``build_dir`` is where it was loaded from (not stored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[2]
    top: str
    top_file: str
    filelist: str
    clock: str
    reset: str
    nodes: list[dict[str, str]]
    memories: list[MemoryEntry]
    streams: Streams
    axilite_ports: list[AxiLitePort] = []
    estimates: dict[str, Any] = {}
    versions: dict[str, str] = {}
    build_dir: Path | None = Field(default=None, exclude=True)

    def resolve(self, rel: str | Path) -> Path:
        """A path the manifest stores (relative to the build folder) as a path to open."""
        if self.build_dir is None:
            raise ValueError("manifest not loaded from a build folder")
        return self.build_dir / rel

    def of_kind(self, *kinds: str) -> dict[str, MemoryEntry]:
        """Memories of the given kinds, by name, in manifest order."""
        return {m.name: m for m in self.memories if m.kind in kinds}

    @property
    def weights(self) -> dict[str, MemoryEntry]:
        return self.of_kind("weights")

    @property
    def thresholds(self) -> dict[str, MemoryEntry]:
        return self.of_kind("thresholds")

    def words(self, name: str) -> list[int]:
        """The golden words of memory ``name`` (its init file, what the RTL loads)."""
        entry = next((m for m in self.memories if m.name == name), None)
        if entry is None:
            raise ArtifactError(f"the manifest has no memory {name!r}")
        path = self.resolve(entry.init_file)
        try:
            words = read_words(path)
        except FileNotFoundError:
            raise ArtifactError(f"{path} (init file of {name}) is missing; rebuild with `mcel build --force`") from None
        except ValueError as exc:
            raise ArtifactError(f"{path} (init file of {name}) is corrupted ({exc}); rebuild with "
                                "`mcel build --force`") from None
        if len(words) != entry.depth:
            raise ArtifactError(f"{path} holds {len(words)} words, the manifest says {entry.depth}; rebuild with "
                                "`mcel build --force`")
        return words

    def weight_matrix(self, name: str) -> np.ndarray:
        """The integer ``MH x MW`` weights memory ``name`` holds, decoded through its layout."""
        return decode_mvau(self.words(name), self.weights[name].layout)

    def fault_memories(self, kinds: tuple[str, ...] = ("weights",)) -> list[Memory]:
        """The memories of ``kinds`` as :class:`Memory` objects, for generating fault maps.

        Weight memories carry their ``finn_mvau`` folding (checked against the stated depth and
        data width). A threshold word is one opaque ``width``-bit element (``depth x 1``): maps
        address (word, bit) only; the predictor decodes what a word means from its layout.
        """
        out = []
        for i, e in enumerate(self.memories):
            if e.kind not in kinds:
                continue
            if e.kind == "thresholds":
                out.append(Memory(name=e.name, rows=e.depth, cols=1, element_bits=e.width,
                                  kind="thresholds", signed=True, layer_index=i))
                continue
            if e.layout.get("type") != "finn_mvau":
                raise ArtifactError(f"manifest memory {e.name!r}: layout type {e.layout.get('type')!r} "
                                    "is not a weight layout (finn_mvau)")
            try:
                mem = finn_mvau_memory(e.layout, e.name)
            except (KeyError, TypeError, ValueError, MemoryLayoutError) as err:
                raise ArtifactError(f"manifest memory {e.name!r}: bad layout ({err})") from None
            if (mem.depth, mem.width) != (e.depth, e.data_bits):
                raise ArtifactError(f"manifest memory {e.name!r}: depth x data bits {e.depth} x {e.data_bits}, "
                                    f"but its folding gives {mem.depth} x {mem.width}")
            out.append(mem)
        return out

    def expected_ii(self) -> int:
        """FINN's estimate of the initiation interval (cycles per image), 0 when unknown."""
        return int(self.estimates.get("expected_ii_cycles", 0) or 0)


def _field(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def parse_manifest(data: object, source: str, build_dir: Path | None = None) -> Manifest:
    """Validate a parsed manifest; ``source`` names it in the error."""
    if isinstance(data, dict) and data.get("version") != MANIFEST_VERSION:
        raise ArtifactError(f"{source}: manifest version {data.get('version')!r}, this code reads version "
                            f"{MANIFEST_VERSION}; rebuild with `mcel build --force`")
    try:
        return Manifest.model_validate({**data, "build_dir": build_dir} if isinstance(data, dict) else data)
    except ValidationError as err:
        raise ArtifactError(f"{source}: bad manifest field {_field(err)}; rebuild with `mcel build --force`") from None


def load_manifest(build_dir: str | Path) -> Manifest:
    """The one loader: ``build_dir/manifest.json``, checked, with ``build_dir`` attached."""
    build_dir = Path(build_dir)
    path = build_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: build the run first (`mcel build`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); rebuild with `mcel build --force`") from None
    return parse_manifest(data, str(path), build_dir)
