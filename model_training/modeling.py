"""The masked LM and tokenizer a run trains: pretrained from the hub / a directory, or fresh."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from app.diffusion.checkpoint import CheckpointError, looks_like_local_path, max_positions, require_mask_token
from app.diffusion.hub_access import hub_unavailable, offline_hint
from model_training.config import TrainConfig
from model_training.errors import TrainingInputError
from model_training.vocab import load_or_train_wordpiece


def _distilbert(cfg: TrainConfig, vocab_size: int, pad_id: int) -> PretrainedConfig:
    return DistilBertConfig(
        vocab_size=vocab_size,
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        hidden_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.seq_len,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )


def _bert(cfg: TrainConfig, vocab_size: int, pad_id: int) -> PretrainedConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.ffn_dim,
        max_position_embeddings=cfg.seq_len,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        pad_token_id=pad_id,
        type_vocab_size=1,
        tie_word_embeddings=True,
    )


FRESH_CONFIGS: dict[str, Callable[[TrainConfig, int, int], PretrainedConfig]] = {
    "distilbert": _distilbert,
    "bert": _bert,
}


def _load_error(kind: str, source: str, err: Exception, local: bool, hub_problem: str | None) -> TrainingInputError:
    first = (str(err).splitlines() or [type(err).__name__])[0][:200]
    if local:
        return TrainingInputError(f"{kind} {source!r} could not be loaded: {first}")
    if hub_problem is not None:  # the library's own message would blame HF_HUB_OFFLINE either way
        hint = offline_hint(f"give a local directory with --{kind}")
        return TrainingInputError(
            f"{kind} {source!r} is neither a local directory nor in the Hugging Face cache, and {hub_problem}; {hint}"
        )
    return TrainingInputError(f"{kind} {source!r} is not a local directory and could not be fetched: {first}")


def _check_source(kind: str, source: str) -> bool:
    """True for a local directory (which must exist), False for a hub id."""
    if not looks_like_local_path(source):
        return False
    if not Path(source).expanduser().is_dir():
        raise TrainingInputError(f"{kind} directory {source!r} does not exist")
    return True


def _hub_problem(local: bool) -> str | None:
    """Why the hub cannot be asked (then only its cache is read, without a minute of retries), or None."""
    return None if local else hub_unavailable()


def load_pretrained_tokenizer(source: str, kind: str = "tokenizer") -> PreTrainedTokenizerBase:
    """A tokenizer from a hub id or directory; it must have [MASK] and [PAD] tokens."""
    local = _check_source(kind, source)
    hub_problem = _hub_problem(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(Path(source).expanduser()) if local else source, local_files_only=local or hub_problem is not None
        )
    except (OSError, ValueError) as err:
        raise _load_error(kind, source, err, local, hub_problem) from None
    try:
        require_mask_token(tokenizer, source)
    except CheckpointError as err:
        raise TrainingInputError(str(err)) from None
    if tokenizer.pad_token_id is None:
        raise TrainingInputError(f"the tokenizer of {source!r} has no pad token; stories are padded to seq_len")
    return tokenizer


def build_tokenizer(cfg: TrainConfig, train_texts: Callable[[], Iterable[str]]) -> PreTrainedTokenizerBase:
    """The pretrained tokenizer (--tokenizer or --model), else a WordPiece vocabulary fitted to the stories."""
    source = cfg.tokenizer or cfg.model
    if source:
        return load_pretrained_tokenizer(source, "tokenizer" if cfg.tokenizer else "model")
    return load_or_train_wordpiece(Path(cfg.output) / "tokenizer", train_texts(), cfg.vocab_size, cfg.seq_len)


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The pretrained masked LM (--model), else a fresh `cfg.architecture` sized by --dim/--n-layers/..."""
    if cfg.model:
        local = _check_source("model", cfg.model)
        source = str(Path(cfg.model).expanduser()) if local else cfg.model
        hub_problem = _hub_problem(local)
        files_only = local or hub_problem is not None
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=files_only)
            _check_seq_len(cfg.seq_len, SimpleNamespace(config=config))  # before loading any weights
            model = AutoModelForMaskedLM.from_pretrained(source, local_files_only=files_only, dtype="float32")
        except TrainingInputError:
            raise
        except (OSError, ValueError) as err:
            raise _load_error("model", cfg.model, err, local, hub_problem) from None
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    else:
        config = FRESH_CONFIGS[cfg.architecture](cfg, len(tokenizer), tokenizer.pad_token_id)
        model = AutoModelForMaskedLM.from_config(config)
    _check_seq_len(cfg.seq_len, model)
    return model


def _check_seq_len(seq_len: int, model: Any) -> None:
    if seq_len > max_positions(model):
        raise TrainingInputError(f"--seq-len {seq_len} is above the model's {max_positions(model)} positions")
