"""TrainConfig: every knob of a training run, read from a YAML preset and overridden by flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.diffusion.sampler_settings import derived_field
from model_training.errors import TrainingInputError

PRESET_DIR = Path(__file__).resolve().parent / "configs"

MixedPrecision = Literal["no", "fp16", "bf16"]
SaveDtype = Literal["float32", "bfloat16", "float16"]
Architecture = Literal["distilbert", "bert"]


class TrainConfig(BaseModel):
    """A training run. Field descriptions double as `--help` text."""

    model_config = ConfigDict(extra="forbid")

    # Model and tokenizer
    model: str | None = Field(None, description="pretrained masked LM (hub id or local dir); empty: a fresh model")
    tokenizer: str | None = Field(
        None,
        description="pretrained tokenizer (hub id or dir); default: the model's, "
        "or a WordPiece vocabulary trained on the training stories for a fresh model",
    )
    vocab_size: int = Field(8192, ge=64, description="WordPiece vocabulary size (fresh tokenizer only)")
    architecture: Architecture = Field("distilbert", description="fresh model family")
    dim: int = Field(256, ge=8, description="fresh model: hidden size")
    n_layers: int = Field(4, ge=1, description="fresh model: transformer layers")
    n_heads: int = Field(4, ge=1, description="fresh model: attention heads")
    hidden_dim: int | None = Field(None, ge=8, description="fresh model: FFN size (default 4 x dim)")
    dropout: float = Field(0.1, ge=0, lt=1, description="fresh model: dropout")
    attention_dropout: float = Field(0.1, ge=0, lt=1, description="fresh model: attention dropout")

    # Data
    dataset: list[str] = Field(
        ..., min_length=1, description="hub dataset id, or local .txt/.txt.gz/.jsonl/.parquet files"
    )
    dataset_config: str | None = Field(None, description="hub dataset configuration name")
    text_field: str = Field("text", description="column holding the story text")
    train_split: str = Field("train", description="hub split to train on")
    valid: list[str] | None = Field(None, description="explicit validation files (else valid_split or valid_fraction)")
    valid_split: str | None = Field("validation", description="hub split to validate on, if the dataset has it")
    valid_fraction: float = Field(0.02, gt=0, lt=1, description="held-out fraction when there is no validation split")
    max_train_stories: int | None = Field(None, ge=1, description="use only the first N training stories")
    max_valid_stories: int | None = Field(512, ge=1, description="validate on the first N stories")
    seq_len: int = Field(256, ge=8, description="tokens per sequence; stories are padded / truncated to it")
    num_proc: int | None = Field(None, ge=1, description="processes for datasets.map tokenization")

    # Objective
    eps: float = Field(1e-3, gt=0, lt=1, description="smallest masking rate t ~ U(eps, 1)")
    low_discrepancy: bool = Field(False, description="stratified t across the batch (MDLM), lower-variance loss")

    # Optimisation
    batch_size: int = Field(32, ge=1, description="sequences per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="warm-up as a fraction of all steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null: off")
    epochs: float = Field(1.0, gt=0, description="passes over the training stories (if max_steps is unset)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    mixed_precision: MixedPrecision = Field("no", description="autocast precision (accelerate)")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = Field(0, description="seed for initialisation, shuffling, masking and evaluation")

    # Checkpoints, evaluation, logging, output
    output: Path = Field(Path("runs/storydiff"), description="output directory")
    save_every: int = Field(500, ge=1, description="save resumable state every N steps")
    keep_last: int = Field(2, ge=1, description="resumable states to keep")
    resume: str | None = Field(None, description="'auto' (latest state under output) or a state directory")
    eval_every: int = Field(500, ge=1, description="validate every N steps (and at the end)")
    eval_t_samples: int = Field(4, ge=1, description="Monte-Carlo t samples per validation story")
    eval_batch_size: int | None = Field(None, ge=1, description="validation batch size (default batch_size)")
    num_samples: int = Field(2, ge=0, description="sample stories written at each evaluation")
    sample_steps: int | None = Field(None, ge=1, description="denoising steps for samples (default seq_len)")
    # the sampler's own fields (bounds and all), with the defaults training writes into its checkpoint
    sample_temperature: float = derived_field(
        "temperature", 1.0, "sampling temperature for samples and the checkpoint's default"
    )
    sample_top_p: float | None = derived_field("top_p", 0.9, "nucleus for samples and the checkpoint's default")
    log_every: int = Field(10, ge=1, description="log training metrics every N steps")
    log_with: Literal["auto", "tensorboard", "none"] = Field("auto", description="accelerate tracker")
    save_dtype: SaveDtype = Field("float32", description="dtype of the shipped weights in output/final")
    dataloader_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.model is None and self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        return self

    @property
    def ffn_dim(self) -> int:
        return self.hidden_dim or 4 * self.dim


def resolve_preset(name: str) -> Path:
    """A config path as given, or the name of a preset in model_training/configs/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    preset = PRESET_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if preset.is_file():
        return preset
    raise TrainingInputError(
        f"config {name!r} not found (presets: {', '.join(sorted(p.stem for p in PRESET_DIR.glob('*.yaml')))})"
    )


def read_yaml(path: Path) -> dict:
    """The mapping in a YAML config file."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TrainingInputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise TrainingInputError(f"{path}: expected a mapping of option: value")
    return values


def build_config(values: dict) -> TrainConfig:
    """Validate merged values; a bad one is a one-line TrainingInputError."""
    if isinstance(values.get("dataset"), str):
        values["dataset"] = [values["dataset"]]
    if isinstance(values.get("valid"), str):
        values["valid"] = [values["valid"]]
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise TrainingInputError(f"bad option {where}: {first['msg']}") from None
