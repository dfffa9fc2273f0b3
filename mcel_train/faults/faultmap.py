"""Fault maps: sparse sets of ``(memory, word, bit, kind)`` and their JSON / NPZ files.

The fault map is the single object both executions consume (software model and RTL), so its
files are strict: every malformed file fails with a :class:`FaultMapError` that names the
problem instead of being half-read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcel_train.errors import ArtifactError
from mcel_train.memory import Memory

FAULT_KINDS = ("flip", "stuck0", "stuck1")
FLIP, STUCK0, STUCK1 = 0, 1, 2
FORMAT = "mcel-faultmap"
VERSION = 1


def apply_masks(code, xor, clear, set_):
    """The one fault semantics, for a stored word or element code (int or integer array):
    flip the ``xor`` bits, then clear the ``clear`` bits (stuck-at-0), then set the ``set_``
    bits (stuck-at-1). The software model applies it to weight codes, both RTL injectors to
    memory words; since a map never names a position twice, the order cannot matter."""
    return ((code ^ xor) & ~clear) | set_


def _repeats_a_position(memory: np.ndarray, word: np.ndarray, bit: np.ndarray) -> bool:
    """Whether two faults share ``(memory, word, bit)``: neighbours once sorted by all three (a
    lexsort: ``np.unique`` over rows took 16 ms for a map of 13k faults, this 2 ms, and a
    sweep makes hundreds of such maps)."""
    order = np.lexsort((bit, word, memory))
    m, w, b = memory[order], word[order], bit[order]
    return bool(((m[1:] == m[:-1]) & (w[1:] == w[:-1]) & (b[1:] == b[:-1])).any())


class FaultMapError(ArtifactError):
    """A fault map (or its file) is malformed or does not fit the memories it is applied to."""


@dataclass
class FaultMap:
    """Faults as parallel arrays; ``memory`` indexes into ``memory_names``.

    ``kind`` holds 0 = flip, 1 = stuck-at-0, 2 = stuck-at-1. ``meta`` records how the map was
    made (fault model, rate, seed, map index) so a file is self-describing.
    """

    memory_names: list[str]
    memory: np.ndarray
    word: np.ndarray
    bit: np.ndarray
    kind: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.memory = np.asarray(self.memory, dtype=np.int64).reshape(-1)
        self.word = np.asarray(self.word, dtype=np.int64).reshape(-1)
        self.bit = np.asarray(self.bit, dtype=np.int64).reshape(-1)
        self.kind = np.asarray(self.kind, dtype=np.int8).reshape(-1)
        n = self.memory.size
        if not (self.word.size == self.bit.size == self.kind.size == n):
            raise FaultMapError("memory, word, bit and kind arrays differ in length")
        if n and (self.memory.min() < 0 or self.memory.max() >= len(self.memory_names)):
            raise FaultMapError("memory index outside the list of memory names")
        if n and (self.kind.min() < 0 or self.kind.max() >= len(FAULT_KINDS)):
            raise FaultMapError(f"fault kind outside {FAULT_KINDS}")
        if n and (self.word.min() < 0 or self.bit.min() < 0):
            raise FaultMapError("negative word or bit index")
        if len(set(self.memory_names)) != len(self.memory_names):
            raise FaultMapError("duplicate memory names")
        # Checked here, so on every path (generated, loaded, built by hand): with distinct
        # positions the faults of a map commute, and apply_masks is their one semantics.
        if n > 1 and _repeats_a_position(self.memory, self.word, self.bit):
            raise FaultMapError("fault map lists the same (memory, word, bit) more than once")

    def __len__(self) -> int:
        return int(self.memory.size)

    @classmethod
    def empty(cls, memory_names: Sequence[str], meta: dict | None = None) -> FaultMap:
        z = np.zeros(0, dtype=np.int64)
        return cls(list(memory_names), z, z, z, z, dict(meta or {}))

    def for_memory(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(word, bit, kind)`` of the faults in one memory (empty if the name is absent)."""
        if name not in self.memory_names:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z.astype(np.int8)
        sel = self.memory == self.memory_names.index(name)
        return self.word[sel], self.bit[sel], self.kind[sel]

    def validate(self, memories: Sequence[Memory]) -> None:
        """Check the map fits ``memories``: names known, indices in range, no duplicate bits."""
        by_name = {m.name: m for m in memories}
        for i, name in enumerate(self.memory_names):
            sel = self.memory == i
            if not sel.any():
                continue
            if name not in by_name:
                raise FaultMapError(f"fault map names memory {name!r}, which does not exist")
            mem = by_name[name]
            if self.word[sel].max() >= mem.depth:
                raise FaultMapError(f"memory {name!r}: word index >= depth {mem.depth}")
            if self.bit[sel].max() >= mem.width:
                raise FaultMapError(f"memory {name!r}: bit index >= width {mem.width}")

    # ---- files -------------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta,
            "memories": list(self.memory_names),
            "faults": [
                {"memory": self.memory_names[m], "word": int(w), "bit": int(b),
                 "kind": FAULT_KINDS[k]}
                for m, w, b, k in zip(self.memory, self.word, self.bit, self.kind, strict=True)
            ],
        }

    @classmethod
    def from_json_dict(cls, d: object) -> FaultMap:
        if not isinstance(d, dict):
            raise FaultMapError("fault map JSON must be an object")
        if d.get("format") != FORMAT:
            raise FaultMapError(f"not a fault map: 'format' is {d.get('format')!r}, not {FORMAT!r}")
        if d.get("version") != VERSION:
            raise FaultMapError(f"unsupported fault map version {d.get('version')!r}")
        names = d.get("memories")
        faults = d.get("faults")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FaultMapError("'memories' must be a list of memory names")
        if not isinstance(faults, list):
            raise FaultMapError("'faults' must be a list")
        mem, word, bit, kind = [], [], [], []
        for i, f in enumerate(faults):
            if not isinstance(f, dict) or set(f) != {"memory", "word", "bit", "kind"}:
                raise FaultMapError(f"fault #{i} must have exactly memory, word, bit, kind")
            if f["memory"] not in names:
                raise FaultMapError(f"fault #{i}: memory {f['memory']!r} not in 'memories'")
            if f["kind"] not in FAULT_KINDS:
                raise FaultMapError(f"fault #{i}: kind {f['kind']!r} not one of {FAULT_KINDS}")
            for key in ("word", "bit"):
                if not isinstance(f[key], int) or isinstance(f[key], bool) or f[key] < 0:
                    raise FaultMapError(f"fault #{i}: {key} must be a non-negative integer")
            mem.append(names.index(f["memory"]))
            word.append(f["word"])
            bit.append(f["bit"])
            kind.append(FAULT_KINDS.index(f["kind"]))
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise FaultMapError("'meta' must be an object")
        return cls(names, np.array(mem), np.array(word), np.array(bit), np.array(kind), meta)

    def save(self, path: str | Path) -> Path:
        """Write ``.json`` (readable) or ``.npz`` (compact), chosen by the suffix."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_json_dict(), indent=1) + "\n")
        elif path.suffix == ".npz":
            np.savez_compressed(
                path,
                format=np.array(FORMAT),
                version=np.array(VERSION),
                memory_names=np.array(json.dumps(self.memory_names)),
                meta=np.array(json.dumps(self.meta)),
                memory=self.memory,
                word=self.word,
                bit=self.bit,
                kind=self.kind,
            )
        else:
            raise FaultMapError(f"{path}: fault map files end in .json or .npz")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FaultMap:
        path = Path(path)
        if not path.is_file():
            raise FaultMapError(f"{path}: no such fault map file")
        try:
            if path.suffix == ".json":
                return cls.from_json_dict(json.loads(path.read_text()))
            if path.suffix == ".npz":
                return cls._load_npz(path)
        except FaultMapError as err:
            raise FaultMapError(f"{path}: {err}") from None
        except (ValueError, OSError, KeyError) as err:
            raise FaultMapError(f"{path}: unreadable fault map ({err})") from err
        raise FaultMapError(f"{path}: fault map files end in .json or .npz")

    @classmethod
    def _load_npz(cls, path: Path) -> FaultMap:
        with np.load(path, allow_pickle=False) as z:
            missing = {"format", "version", "memory_names", "memory", "word", "bit", "kind"} - set(
                z.files
            )
            if missing:
                raise FaultMapError(f"missing arrays {sorted(missing)}")
            if str(z["format"]) != FORMAT:
                raise FaultMapError(f"not a fault map: format {str(z['format'])!r}")
            if int(z["version"]) != VERSION:
                raise FaultMapError(f"unsupported fault map version {int(z['version'])}")
            for key in ("memory", "word", "bit", "kind"):
                if z[key].dtype.kind not in "iu":
                    raise FaultMapError(f"array {key!r} must hold integers")
            names = json.loads(str(z["memory_names"]))
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            return cls(names, z["memory"], z["word"], z["bit"], z["kind"], meta)
