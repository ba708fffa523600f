"""`diffusion_config.json`: what a storydiff checkpoint adds to a plain masked-LM directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from app.diffusion.sampler_settings import BUILTIN_PRESETS, Preset, SamplerOverrides, SamplerSettings

DIFFUSION_CONFIG_NAME = "diffusion_config.json"


class DiffusionConfig(BaseModel):
    """Sequence length, recommended sampler settings and provenance of a diffusion checkpoint."""

    model_config = ConfigDict(extra="allow")

    format_version: int = 1
    seq_len: int = Field(..., ge=1)
    sampler: SamplerOverrides = Field(
        default_factory=SamplerOverrides,
        description="The checkpoint's recommended sampler settings; fields left out take the built-in defaults.",
    )
    presets: dict[Preset, SamplerOverrides] = Field(
        default_factory=dict,
        description="Fields each preset sets over `sampler`; a preset left out takes its built-in fields.",
    )
    trained_on: str | None = None
    training: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_num_steps(cls, data: Any) -> Any:
        """Files written before the settings were declared once name `steps` `num_steps` (null: one per token)."""
        sampler = data.get("sampler") if isinstance(data, dict) else None
        if isinstance(sampler, dict) and "num_steps" in sampler:
            sampler = dict(sampler)
            num_steps = sampler.pop("num_steps")
            if num_steps is not None:
                sampler.setdefault("steps", num_steps)
            data = {**data, "sampler": sampler}
        return data

    @field_serializer("sampler")
    def _only_what_is_set(self, sampler: BaseModel) -> dict[str, Any]:
        return sampler.model_dump(mode="json", exclude_unset=True)

    @field_serializer("presets")
    def _presets_as_set(self, presets: dict[Preset, BaseModel]) -> dict[str, Any]:
        return {name: self._only_what_is_set(fields) for name, fields in presets.items()}

    @property
    def sampler_settings(self) -> SamplerSettings:
        """The settings a request gets for every field it leaves out: the checkpoint's over the built-in
        defaults, with one step per token unless the checkpoint names a number."""
        return SamplerSettings(steps=self.seq_len).override(self.sampler)

    def length_for(self, length: int | None) -> int:
        """A story's length: the one asked for, else the checkpoint's `seq_len` (the one default-length rule)."""
        return self.seq_len if length is None else length

    def settings_for(self, preset: Preset | None) -> SamplerSettings:
        """The settings under a request that names `preset` (None: none): the preset's fields, the
        checkpoint's own or else the built-in ones, over `sampler_settings`."""
        if preset is None:
            return self.sampler_settings
        return self.sampler_settings.override(self.presets.get(preset, BUILTIN_PRESETS[preset]))

    def save(self, directory: str | Path) -> Path:
        """Write `diffusion_config.json` into `directory` and return its path."""
        path = Path(directory) / DIFFUSION_CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DiffusionConfig:
        """Read a `diffusion_config.json` file."""
        return cls.model_validate_json(Path(path).read_text())
