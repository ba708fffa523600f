"""Story datasets: a hub id through `datasets.load_dataset`, or local text / JSON lines / Parquet files.

Local `.txt` / `.txt.gz` files hold stories separated by lines that are exactly `<|endoftext|>`
(the original TinyStories format). Every loader returns datasets with one `text` column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset
from huggingface_hub import constants as hub_constants

from app.diffusion.hub_access import hub_unavailable, offline_hint
from model_training.config import TrainConfig
from model_training.errors import TrainingInputError

STORY_SEPARATOR = "<|endoftext|>"
LOCAL_FILES_HINT = "give local files instead: --dataset FILE... --valid FILE... (.txt[.gz], .jsonl or .parquet)"

LOCAL_BUILDERS: dict[str, str] = {
    ".txt": "text",
    ".txt.gz": "text",
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".json": "json",
    ".parquet": "parquet",
}


@dataclass
class StorySplits:
    """Training and validation stories, each a Dataset with a `text` column."""

    train: Dataset
    valid: Dataset
    source: str


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(LOCAL_BUILDERS, key=len, reverse=True) if name.endswith(s)), path.suffix)


def is_local(source: str) -> bool:
    """True when `source` names files rather than a hub dataset id."""
    return (
        Path(source).expanduser().exists()
        or source.startswith(("/", ".", "~"))
        or _suffix(Path(source)) in LOCAL_BUILDERS
    )


def _split_stories(batch: dict[str, list[str]]) -> dict[str, list[str]]:
    """Documents -> stories: cut at `<|endoftext|>` lines, strip, drop empty pieces."""
    stories = []
    for document in batch["text"]:
        lines = document.replace("\r\n", "\n").split("\n")
        story: list[str] = []
        for line in [*lines, STORY_SEPARATOR]:
            if line.strip() == STORY_SEPARATOR:
                text = "\n".join(s for s in story if s).strip()
                if text:
                    stories.append(text)
                story = []
            else:
                story.append(line.strip())
    return {"text": stories}


def load_local(files: list[str], text_field: str) -> Dataset:
    """Stories from local files of one kind (.txt[.gz], .jsonl, .parquet)."""
    paths = [Path(f).expanduser() for f in files]
    for path in paths:
        if not path.is_file():
            raise TrainingInputError(f"data file {str(path)!r} does not exist")
    kinds = {_suffix(p) for p in paths}
    builders = {LOCAL_BUILDERS.get(k) for k in kinds}
    if None in builders:
        raise TrainingInputError(f"unsupported data file type {sorted(kinds)}; use one of {', '.join(LOCAL_BUILDERS)}")
    if len(builders) > 1:
        raise TrainingInputError(f"mix of data file types {sorted(kinds)}; give files of one kind")
    builder = builders.pop()
    data_files = [str(p.resolve()) for p in paths]
    if builder == "text":
        docs = datasets.load_dataset("text", data_files=data_files, sample_by="document", split="train")
        return docs.map(_split_stories, batched=True, remove_columns=docs.column_names)
    ds = datasets.load_dataset(builder, data_files=data_files, split="train")
    return _text_column(ds, text_field, repr(files[0]))


def load_hub(dataset_id: str, config_name: str | None, split: str, text_field: str) -> Dataset:
    """One split of a hub dataset, reduced to a `text` column.

    An unreachable hub fails at once (datasets would retry for a minute); with HF_HUB_OFFLINE set,
    datasets reads its cache.
    """
    problem = hub_unavailable()
    if problem is not None and not hub_constants.HF_HUB_OFFLINE:
        raise TrainingInputError(
            f"dataset {dataset_id!r} is not a local file, and {problem}; {LOCAL_FILES_HINT} "
            "(a copy already in the Hugging Face cache loads with HF_HUB_OFFLINE=1)"
        )
    try:
        ds = datasets.load_dataset(dataset_id, config_name, split=split)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        if problem is not None:
            raise TrainingInputError(
                f"dataset {dataset_id!r} (split {split!r}) is neither a local file nor in the Hugging Face "
                f"cache, and {problem}; {offline_hint(LOCAL_FILES_HINT)}"
            ) from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainingInputError(
            f"dataset {dataset_id!r} (split {split!r}) could not be loaded: {first[:200]}"
        ) from None
    return _text_column(ds, text_field, f"dataset {dataset_id!r}")


def _text_column(ds: Dataset, text_field: str, source: str) -> Dataset:
    """`ds` reduced to its `text_field` column, named `text`; a clear error when it has none."""
    if text_field not in ds.column_names:
        raise TrainingInputError(f"{source} has no {text_field!r} column (it has {ds.column_names})")
    kept = ds.select_columns([text_field])
    return kept.rename_column(text_field, "text") if text_field != "text" else kept


def _hub_split(cfg: TrainConfig, split: str) -> Callable[[], Dataset]:
    return lambda: load_hub(cfg.dataset[0], cfg.dataset_config, split, cfg.text_field)


def load_story_splits(cfg: TrainConfig) -> StorySplits:
    """Training and validation stories: explicit valid files, a hub split, or a seeded held-out fraction."""
    local = all(is_local(s) for s in cfg.dataset)
    if not local and len(cfg.dataset) > 1:
        raise TrainingInputError("give either one hub dataset id or local files, not several ids")
    train = load_local(cfg.dataset, cfg.text_field) if local else _hub_split(cfg, cfg.train_split)()
    if cfg.valid:
        valid = load_local(cfg.valid, cfg.text_field)
    elif not local and cfg.valid_split:
        try:
            valid = _hub_split(cfg, cfg.valid_split)()
        except TrainingInputError:
            valid = None
    else:
        valid = None
    if valid is None:
        if len(train) < 2:
            raise TrainingInputError("too few stories to hold out a validation set")
        held = train.train_test_split(test_size=cfg.valid_fraction, seed=cfg.seed, shuffle=True)
        train, valid = held["train"], held["test"]
    if cfg.max_train_stories is not None:
        train = train.select(range(min(cfg.max_train_stories, len(train))))
    if cfg.max_valid_stories is not None:
        valid = valid.select(range(min(cfg.max_valid_stories, len(valid))))
    if len(train) == 0 or len(valid) == 0:
        raise TrainingInputError(f"no stories found in {cfg.dataset}")
    return StorySplits(train, valid, ", ".join(Path(s).name if local else s for s in cfg.dataset))
