"""Stories -> fixed-length token sequences with `datasets.map` (batched, cached, parallel).

As in the reference recipe each story is padded to `seq_len` with [PAD], and PAD positions are
attended to, masked and modelled: the model learns where a story ends. Each row also records how
many characters of the story its tokens cover (for bits per character) and whether it was cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

COLUMNS = ["input_ids", "n_chars", "truncated"]


@dataclass
class TokenizedSplit:
    """A tokenized split and how many of its stories did not fit in `seq_len`."""

    dataset: Dataset
    num_truncated: int

    @property
    def truncated_fraction(self) -> float:
        return self.num_truncated / max(len(self.dataset), 1)


def encode_batch(batch: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, seq_len: int) -> dict[str, list]:
    """Token ids padded / cut to `seq_len`, covered characters and a truncation flag per story."""
    enc = tokenizer(batch["text"], add_special_tokens=True, return_offsets_mapping=True, verbose=False)
    pad_id = tokenizer.pad_token_id
    special = set(tokenizer.all_special_ids)
    rows: dict[str, list] = {name: [] for name in COLUMNS}
    for text, ids, offsets in zip(batch["text"], enc["input_ids"], enc["offset_mapping"], strict=True):
        truncated = len(ids) > seq_len
        kept = ids[:seq_len]
        if truncated:
            ends = [end for tok, (_, end) in zip(kept, offsets[:seq_len], strict=False) if tok not in special]
            n_chars = max(ends, default=0)
        else:
            n_chars = len(text)
        rows["input_ids"].append(kept + [pad_id] * (seq_len - len(kept)))
        rows["n_chars"].append(max(n_chars, 1))
        rows["truncated"].append(truncated)
    return rows


def tokenize_split(
    stories: Dataset, tokenizer: PreTrainedTokenizerBase, seq_len: int, num_proc: int | None, desc: str
) -> TokenizedSplit:
    """Tokenize a `text` dataset into COLUMNS (torch format); cached by datasets' fingerprinting."""
    num_proc = num_proc if num_proc and len(stories) >= 1000 * num_proc else None
    dataset = stories.map(
        encode_batch,
        batched=True,
        num_proc=num_proc,
        remove_columns=stories.column_names,
        fn_kwargs={"tokenizer": tokenizer, "seq_len": seq_len},
        desc=f"tokenizing {desc}",
    )
    num_truncated = int(sum(dataset["truncated"]))
    dataset.set_format("torch", columns=COLUMNS)
    return TokenizedSplit(dataset, num_truncated)
