"""Train the judge on the CPU: seeded, from the training stories only, keeping the step with the best dev loss.

A tenth of a second's nondeterminism would make two judges disagree, so every draw is seeded: the dev
split, the vocabulary (BPE training is deterministic), the initial weights, the windows and dropout.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import GPT2LMHeadModel, get_cosine_schedule_with_warmup

from model_training.data import load_local
from model_training.judge.config import JudgeConfig, cache_dir
from model_training.judge.model import END, Judge, build_model, is_trained, normalize, train_tokenizer
from model_training.judge.score import surprise


def read_stories(files: Sequence[str]) -> list[str]:
    """Stories from the project's readers (`<|endoftext|>`-separated text, JSON lines or Parquet), one line each."""
    return [normalize(text) for text in load_local(list(files), "text")["text"]]


def split_dev(stories: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, dev): a seeded share of the training stories held back to choose the step."""
    order = torch.randperm(len(stories), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(len(stories) * fraction))
    if cut >= len(stories):
        raise ValueError(f"{len(stories)} stories are too few to hold back a dev share of {fraction}")
    return [stories[i] for i in order[cut:]], [stories[i] for i in order[:cut]]


def pack(judge: Judge, stories: Sequence[str]) -> torch.Tensor:
    """All stories as one stream of ids, each after an end token, as scoring reads them."""
    ids = [judge.end_id]
    for enc in judge.tokenizer.encode_batch(list(stories)):
        ids += [*enc.ids, judge.end_id]
    return torch.tensor(ids)  # (N,)


def optimizer_for(model: GPT2LMHeadModel, cfg: JudgeConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or position-free vectors)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def fit(judge: Judge, cfg: JudgeConfig, stream: torch.Tensor, dev: list[str], progress: bool) -> dict[str, Any]:
    """Train `judge.model` in place for `cfg.steps`, then restore the weights of the best dev evaluation."""
    model, windows = judge.model, torch.Generator().manual_seed(cfg.seed)
    if len(stream) <= cfg.block_size:
        raise ValueError(f"{len(stream)} training tokens do not fill one window of {cfg.block_size}")
    optimizer = optimizer_for(model, cfg)
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup, cfg.steps)
    torch.manual_seed(cfg.seed)  # dropout
    curve: list[dict[str, float]] = []
    best: dict[str, Any] = {"dev_ppl": float("inf")}
    bar = tqdm(range(1, cfg.steps + 1), desc="training judge", disable=not progress, unit="step")
    for step in bar:
        model.train()
        starts = torch.randint(len(stream) - cfg.block_size, (cfg.batch_size,), generator=windows)
        x = torch.stack([stream[s : s + cfg.block_size] for s in starts.tolist()])  # (B, L)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            dev_ppl = surprise(judge, dev).perplexity
            curve.append({"step": step, "train_loss": loss.item(), "dev_ppl": dev_ppl})
            if dev_ppl < best["dev_ppl"]:
                best = {"dev_ppl": dev_ppl, "step": step, "state": copy.deepcopy(model.state_dict())}
            bar.set_postfix(loss=f"{loss.item():.3f}", dev_ppl=f"{dev_ppl:.2f}", best=best["step"])
    model.load_state_dict(best.pop("state"))
    model.eval()
    return {"best_step": best["step"], "dev_ppl": best["dev_ppl"], "curve": curve}


def train_judge(cfg: JudgeConfig, valid: Sequence[str] = (), progress: bool = True) -> Judge:
    """A judge trained from `cfg`; its perplexity on the `valid` files' stories is measured and kept in `info`."""
    started = time.perf_counter()
    train, dev = split_dev(read_stories(cfg.train), cfg.dev_fraction, cfg.seed)
    tokenizer = train_tokenizer(train, cfg.vocab_size)
    judge = Judge(build_model(cfg, tokenizer.get_vocab_size(), tokenizer.token_to_id(END)), tokenizer, {})
    stream = pack(judge, train)
    fitted = fit(judge, cfg, stream, dev, progress)
    judge.info = {
        "config": cfg.model_dump(mode="json") | {"train": [Path(f).name for f in cfg.train]},  # no local paths
        "digest": cfg.digest(),
        "parameters": sum(p.numel() for p in judge.model.parameters()),
        "train_stories": len(train),
        "train_tokens": len(stream),
        "dev_stories": len(dev),
        **fitted,
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if valid:
        stories = read_stories(valid)
        held_out = surprise(judge, stories)
        judge.info["valid"] = {"files": [Path(f).name for f in valid], "stories": len(stories),
                               "tokens": held_out.tokens, "ppl": held_out.perplexity}  # fmt: skip
    return judge


def save_atomically(judge: Judge, folder: Path) -> None:
    """Write into a sibling temp folder, then rename: a half-written judge never looks trained."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    judge.save(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def ensure_judge(
    cfg: JudgeConfig | None = None, folder: Path | None = None, valid: Sequence[str] = (), progress: bool = True
) -> Judge:
    """The judge in `folder` (default: `cfg`'s cache folder), trained and saved there first when absent."""
    cfg = cfg or JudgeConfig()
    folder = folder or cache_dir(cfg)
    if not is_trained(folder):
        if progress:
            print(f"no judge in {folder}: training one (about 15-20 minutes on one CPU thread)", flush=True)
        save_atomically(train_judge(cfg, valid, progress), folder)
    return Judge.load(folder)
