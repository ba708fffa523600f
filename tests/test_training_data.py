"""Story loading for every local file type, held-out splits, the WordPiece vocabulary and tokenization."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from model_training.data import load_local, load_story_splits
from model_training.errors import TrainingInputError
from model_training.tokenization import tokenize_split
from model_training.vocab import SPECIAL_TOKENS, train_wordpiece
from tests.conftest import STORIES_DIR, tiny_train_config


def sample_stories() -> list[str]:
    text = (STORIES_DIR / "train.txt").read_text()
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]


def write_as(kind: str, directory: Path, stories: list[str]) -> Path:
    """The sample stories in one of the supported file formats."""
    joined = "".join(f"{s}\n<|endoftext|>\n" for s in stories)
    if kind == "txt":
        (path := directory / "stories.txt").write_text(joined)
    elif kind == "txt.gz":
        with gzip.open(path := directory / "stories.txt.gz", "wt") as f:
            f.write(joined)
    elif kind == "jsonl":
        (path := directory / "stories.jsonl").write_text(
            "".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(stories))
        )
    else:
        pd.DataFrame({"text": stories, "n": range(len(stories))}).to_parquet(path := directory / "stories.parquet")
    return path


@pytest.mark.parametrize("kind", ["txt", "txt.gz", "jsonl", "parquet"])
def test_every_file_type_gives_the_same_stories(tmp_path: Path, kind: str) -> None:
    stories = sample_stories()[:40]
    dataset = load_local([str(write_as(kind, tmp_path, stories))], "text")
    assert dataset.column_names == ["text"]
    assert (
        dataset["text"][:] == stories if not hasattr(dataset["text"], "to_pylist") else list(dataset["text"]) == stories
    )


def test_stories_keep_their_paragraphs() -> None:
    dataset = load_local([str(STORIES_DIR / "train.txt")], "text")
    assert len(dataset) == 300
    assert "\n" in dataset[0]["text"] and "<|endoftext|>" not in "".join(dataset["text"])


def test_held_out_fraction_is_seeded_and_disjoint(tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path, "--valid", "none", "--valid-fraction", "0.1", "--max-valid-stories", "none")
    cfg = cfg.model_copy(update={"valid": None})
    first, second = load_story_splits(cfg), load_story_splits(cfg)
    assert list(first.valid["text"]) == list(second.valid["text"])
    assert len(first.valid) == 30 and len(first.train) == 270
    assert not set(first.valid["text"]) & set(first.train["text"])


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match="does not exist"):
        load_local([str(tmp_path / "nope.txt")], "text")


def test_wordpiece_vocabulary(tmp_path: Path) -> None:
    tokenizer = train_wordpiece(sample_stories(), vocab_size=300, model_max_length=64)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    assert (loaded.pad_token_id, loaded.mask_token_id) == (0, 4)
    assert len(loaded) == 300
    assert loaded("Lily")["input_ids"] != loaded("lily")["input_ids"]  # cased
    assert loaded.decode(loaded("Once upon a time")["input_ids"]) == "Once upon a time"


def test_tokenization_pads_counts_truncation_and_characters() -> None:
    tokenizer = train_wordpiece(sample_stories(), vocab_size=300, model_max_length=64)
    stories = load_local([str(STORIES_DIR / "train.txt")], "text").select(range(50))
    split = tokenize_split(stories, tokenizer, seq_len=64, num_proc=None, desc="test")
    lengths = [len(tokenizer(s)["input_ids"]) for s in stories["text"]]
    assert split.num_truncated == sum(n > 64 for n in lengths)
    row = split.dataset[0]
    assert row["input_ids"].shape == (64,)
    short = next(i for i, n in enumerate(lengths) if n <= 64) if min(lengths) <= 64 else None
    if short is not None:
        assert split.dataset[short]["n_chars"].item() == len(stories[short]["text"])
        assert (split.dataset[short]["input_ids"][lengths[short] :] == tokenizer.pad_token_id).all()
    long = next(i for i, n in enumerate(lengths) if n > 64)
    covered = split.dataset[long]["n_chars"].item()
    assert 0 < covered < len(stories[long]["text"])
    assert (
        tokenizer(stories[long]["text"][:covered])["input_ids"][:60] == split.dataset[long]["input_ids"][:60].tolist()
    )
