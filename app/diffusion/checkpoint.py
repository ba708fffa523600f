"""Load and save diffusion checkpoints: a masked-LM directory (or hub id) plus its tokenizer.

A checkpoint is what `AutoModelForMaskedLM.save_pretrained` and `tokenizer.save_pretrained` write,
optionally with a `diffusion_config.json` (see `diffusion_config.py`). Plain reference-format
directories load unchanged; their sequence length defaults to the model's max positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.diffusion.devices import select_device, select_dtype
from app.diffusion.diffusion_config import DIFFUSION_CONFIG_NAME, DiffusionConfig
from app.diffusion.hub_access import hub_unavailable, offline_hint
from app.paths import DEFAULT_MODEL_DIR as DEFAULT_MODEL_DIR  # re-exported: the checkpoint loaded by default
from app.paths import looks_like_local_path as looks_like_local_path  # re-exported: import-light
from app.paths import model_name

log = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
OFFLINE_HINT = "point --model (or the STORYDIFF_MODEL environment variable) at a local checkpoint directory"


class CheckpointError(ValueError):
    """A checkpoint could not be loaded; the message says why and what to do."""


@dataclass
class Checkpoint:
    """A loaded diffusion model, ready to sample."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: DiffusionConfig
    source: str
    device: torch.device
    dtype: torch.dtype

    @property
    def mask_id(self) -> int:
        return int(self.tokenizer.mask_token_id)

    @property
    def name(self) -> str:
        """How the API and `generate --json` name this model (`app.paths.model_name`: no server paths)."""
        return model_name(self.source)

    @property
    def max_positions(self) -> int:
        return max_positions(self.model)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def max_positions(model: PreTrainedModel) -> int:
    """The longest sequence the model's position embeddings allow."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            # RoBERTa-style models reserve two positions for the padding offset.
            return value - 2 if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta") else value
    raise CheckpointError(f"model config {type(cfg).__name__} names no maximum sequence length")


def _check_local_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a file; give the directory that holds it")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{str(path)!r} has no config.json: it is not a saved model directory")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{str(path)!r} has no weights (expected one of {', '.join(WEIGHT_FILES)})")


def require_mask_token(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """Refuse a tokenizer without a mask token: every masked diffusion step writes and reads it."""
    if tokenizer.mask_token_id is None:
        raise CheckpointError(
            f"the tokenizer of {source!r} has no mask token; a masked diffusion model needs one "
            "(add it with tokenizer.add_special_tokens({'mask_token': '[MASK]'}) and resize the model)"
        )


def _load_tokenizer(source: str, local_only: bool) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    require_mask_token(tokenizer, source)
    return tokenizer


def _diffusion_config(source: str, local_dir: Path | None, model: PreTrainedModel, cache_only: bool) -> DiffusionConfig:
    path: Path | None = local_dir / DIFFUSION_CONFIG_NAME if local_dir else None
    if local_dir is None:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, DIFFUSION_CONFIG_NAME, local_files_only=cache_only))
        except Exception:  # a plain hub masked LM has none: fall back like a reference dir
            path = None
    if path is not None and path.is_file():
        config = DiffusionConfig.load(path)
    else:
        config = DiffusionConfig(seq_len=max_positions(model))
    if config.seq_len > max_positions(model):
        raise CheckpointError(
            f"{DIFFUSION_CONFIG_NAME} asks for seq_len {config.seq_len}, above the model's "
            f"{max_positions(model)} positions"
        )
    return config


def load_checkpoint(
    source: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Checkpoint:
    """Load a diffusion checkpoint from a local directory or a Hugging Face hub id.

    Args:
        source: a directory written by `save_pretrained`, or a hub id such as "org/name".
        device: "cpu", "cuda" or None for the fastest one present (mps is refused: no float64).
        dtype: "float32", "bfloat16", "float16" or None (bf16 on GPUs, fp32 on CPU).
    """
    source = str(source)
    local_dir = Path(source).expanduser() if looks_like_local_path(source) else None
    if local_dir is not None:
        _check_local_dir(local_dir)
        source = str(local_dir)
    torch_device = device if isinstance(device, torch.device) else select_device(device)
    torch_dtype = select_dtype(torch_device, dtype)
    hub_problem = None if local_dir is not None else hub_unavailable()
    cache_only = hub_problem is not None  # off or unreachable: the local HF cache, at once, without retries
    try:
        tokenizer = _load_tokenizer(source, local_only=local_dir is not None or cache_only)
        model = AutoModelForMaskedLM.from_pretrained(
            source, dtype=torch_dtype, local_files_only=local_dir is not None or cache_only
        )
    except CheckpointError:
        raise
    except OSError as err:
        if local_dir is not None:
            raise CheckpointError(f"could not load {source!r}: {err}") from err
        if hub_problem is not None:  # the library's own message would blame HF_HUB_OFFLINE either way
            where = "is neither a local directory nor in the Hugging Face cache, and"
            raise CheckpointError(
                f"{source!r} {where} {hub_problem}. To run offline, {offline_hint(OFFLINE_HINT)}."
            ) from None
        raise CheckpointError(
            f"{source!r} is not a local directory and could not be fetched from the hub: {str(err).splitlines()[0]}"
        ) from err
    model.to(torch_device).eval()
    config = _diffusion_config(source, local_dir, model, cache_only)
    log.info(
        "loaded %s: %s, %.1fM parameters, %s %s, seq_len %d",
        source,
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        torch_device,
        str(torch_dtype).removeprefix("torch."),
        config.seq_len,
    )
    return Checkpoint(model, tokenizer, config, source, torch_device, torch_dtype)


def save_checkpoint(
    directory: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: DiffusionConfig,
) -> Path:
    """Write model, tokenizer and `diffusion_config.json` so that `load_checkpoint` reads them back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config.save(directory)
    return directory
