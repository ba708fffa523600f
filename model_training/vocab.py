"""A cased WordPiece vocabulary trained on the training stories, saved as a fast tokenizer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def canonical_ids(vocab: dict[str, int]) -> dict[str, int]:
    """Special tokens first, then the rest sorted: the trainer's ids follow Rust hash order otherwise."""
    rest = sorted((t for t in vocab if t not in SPECIAL_TOKENS), key=lambda t: (t.startswith("##"), len(t), t))
    return {token: i for i, token in enumerate(SPECIAL_TOKENS + rest)}


def train_wordpiece(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerBase:
    """A BERT-style cased WordPiece tokenizer ([PAD]=0 ... [MASK]=4) fitted to `texts`.

    No [CLS]/[SEP] template, like the reference checkpoint: a story fills the sequence from its
    first position and [PAD] marks where it ends, so no position is spent on markers.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2)
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    tokenizer.model = models.WordPiece(canonical_ids(tokenizer.get_vocab()), unk_token="[UNK]")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def load_or_train_wordpiece(
    directory: Path, texts: Iterable[str], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerBase:
    """The run's tokenizer from `directory` if an earlier (resumed) run saved one, else a new one saved there."""
    if (directory / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(directory))
    tokenizer = train_wordpiece(texts, vocab_size, model_max_length)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
