"""`diffusion_config.json`: what a storydiff checkpoint adds to a plain masked-LM directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DIFFUSION_CONFIG_NAME = "diffusion_config.json"

RemaskingName = Literal["random", "low_confidence"]


class SamplerDefaults(BaseModel):
    """The sampler settings a checkpoint recommends; requests may override each one."""

    model_config = ConfigDict(extra="forbid")

    num_steps: int | None = Field(None, ge=1, description="None: as many steps as tokens.")
    remasking: RemaskingName = "random"
    temperature: float = Field(0.0, ge=0.0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    block_length: int | None = Field(
        None, ge=1, description="low_confidence only: reveal blocks of this many positions, left to right."
    )


class DiffusionConfig(BaseModel):
    """Sequence length, sampler defaults and provenance of a diffusion checkpoint."""

    model_config = ConfigDict(extra="allow")

    format_version: int = 1
    seq_len: int = Field(..., ge=1)
    sampler: SamplerDefaults = Field(default_factory=SamplerDefaults)
    trained_on: str | None = None
    training: dict[str, Any] = Field(default_factory=dict)

    @property
    def default_steps(self) -> int:
        """Denoising steps when a request names none: the checkpoint's, else one per token."""
        return self.sampler.num_steps or self.seq_len

    def save(self, directory: str | Path) -> Path:
        """Write `diffusion_config.json` into `directory` and return its path."""
        path = Path(directory) / DIFFUSION_CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DiffusionConfig:
        """Read a `diffusion_config.json` file."""
        return cls.model_validate_json(Path(path).read_text())
