"""The simulation job: what one testbench run does, written by the runner, read by the testbench.

Why typed: the job crosses a process boundary (the Python runner writes it, the cocotb testbench
inside the simulator reads it from ``MCEL_SIM_JOB``), and is split into shards and copied for
profile training. One pydantic model names every field once, and a malformed job fails on load
with the field named. Paths are absolute: a job is written for one run of the simulator, next
to its outputs, and rewritten by every run (persistent records store relative paths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcel_train.errors import ArtifactError


class SimJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: str = Field(description="the build's manifest.json")
    inputs: str = Field(description=".npy of packed input words, all images")
    predicted: str | None = Field(None, description=".npy (maps x images x outputs) software prediction")
    maps: list[str] = Field(description="fault-map files, one per map ('' = the clean map)")
    batch_images: int = Field(gt=0)
    watchdog_cycles: int = Field(gt=0)
    backpressure: bool = False
    inject: Literal["backdoor", "axilite"] = "backdoor"
    memory_kinds: list[Literal["weights", "thresholds"]] = ["weights"]
    transient_cycle: int | None = Field(None, ge=0)
    out: str = Field(description=".npz the testbench writes its raw results to")
    mode: Literal["batched", "naive"] = "batched"

    @property
    def build_dir(self) -> Path:
        return Path(self.manifest).parent

    def save(self, path: Path) -> Path:
        Path(path).write_text(self.model_dump_json(indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SimJob:
        try:
            return cls.model_validate_json(Path(path).read_text())
        except ValidationError as err:
            first = err.errors()[0]
            raise ArtifactError(f"{path}: bad simulation job field {'.'.join(map(str, first['loc']))}: "
                                f"{first['msg']}") from None
