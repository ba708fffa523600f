"""The training loop: accelerate for devices, precision, accumulation, scale-out and resumable state."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from app.diffusion.logits import logits_at_positions
from app.diffusion.sampler_settings import SamplerSettings
from model_training.checkpoints import Progress, load_state, resolve_resume, save_state
from model_training.config import TrainConfig
from model_training.evaluation import EvalResult, sample_stories, validation_bound
from model_training.export import export_checkpoint, hardware, sampler_overrides
from model_training.inputs import RunInputs, build_inputs
from model_training.objective import diffusion_loss

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a finished run reports."""

    final_dir: Path
    progress: Progress
    result: EvalResult
    tokens_per_second: float
    loss_history: list[tuple[int, float]]
    evaluations: list[tuple[int, float]]
    """(step, validation nats per position) for each evaluation of this process's run."""

    @property
    def best_dir(self) -> Path:
        """output/best: the checkpoint with the lowest validation bound (`progress.best_step`)."""
        return self.final_dir.with_name("best")


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for `cfg`: precision, accumulation, seedable shuffling, tensorboard when installed."""
    use_tb = cfg.log_with == "tensorboard" or (cfg.log_with == "auto" and importlib.util.find_spec("tensorboard"))
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard" if use_tb else None,
        project_config=ProjectConfiguration(project_dir=str(cfg.output), logging_dir=str(Path(cfg.output) / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:  # each process would train alone on all the data
        from model_training.errors import TrainingInputError

        raise TrainingInputError(
            f"{launched} processes were launched but accelerate sees one (no distributed backend); "
            "on CPUs launch with an accelerate config that sets use_cpu (model_training/accelerate/ddp-cpu.yaml)"
        )
    return accelerator


def mask_generator(cfg: TrainConfig, accelerator: Accelerator, step: int, micro: int) -> torch.Generator:
    """A generator seeded by (seed, step, micro-batch, rank): masks replay exactly after a resume."""
    seed = hash((cfg.seed, step, micro, accelerator.process_index)) % (2**63)
    return torch.Generator(device=accelerator.device).manual_seed(seed)


def tracker_config(cfg: TrainConfig) -> dict:
    """Flat scalar hyperparameters for the trackers."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.model_dump().items()}


def can_sample_unwrapped(accelerator: Accelerator) -> bool:
    """Sampling on the main process alone needs the full weights there (not FSDP / DeepSpeed shards)."""
    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def can_hook_head(cfg: TrainConfig, accelerator: Accelerator) -> bool:
    """Whether the head may run at masked positions only: the hook must sit inside a plain forward
    over whole weights, not a compiled graph or FSDP / DeepSpeed shards (those compute full logits)."""
    return not cfg.compile and can_sample_unwrapped(accelerator)


class Trainer:
    """One run: holds the prepared objects and steps, evaluates and saves them."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, inputs: RunInputs) -> None:
        self.cfg, self.accelerator, self.inputs = cfg, accelerator, inputs
        # Its own generator: otherwise each new iterator draws a worker seed from the global RNG, which
        # after a resume would shift the dropout masks away from those of an uninterrupted run.
        train_loader = DataLoader(
            inputs.train.dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.dataloader_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        valid_loader = DataLoader(inputs.valid.dataset, batch_size=cfg.eval_batch_size or cfg.batch_size)
        # torch.compile of a Module is a Module (OptimizedModule); its stubs only promise a callable
        model = cast(torch.nn.Module, torch.compile(inputs.model)) if cfg.compile else inputs.model
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=cfg.betas,
        )
        self.model, self.optimizer, self.train_loader, self.valid_loader = accelerator.prepare(
            model, optimizer, train_loader, valid_loader
        )
        if len(self.train_loader) == 0:
            from model_training.errors import TrainingInputError

            raise TrainingInputError(f"fewer training stories ({len(inputs.train.dataset)}) than one batch")
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        # The prepared scheduler steps once per process per optimizer step (accelerate's convention).
        n = accelerator.num_processes
        self.scheduler = accelerator.prepare(
            get_cosine_with_min_lr_schedule_with_warmup(
                self.optimizer,
                num_warmup_steps=int(cfg.warmup_ratio * self.total_steps) * n,
                num_training_steps=self.total_steps * n,
                min_lr_rate=cfg.min_lr_ratio,
            )
        )
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * n
        self.bare_model = accelerator.unwrap_model(self.model)
        self.head_only = can_hook_head(cfg, accelerator)
        self.progress = Progress()
        self.loss_history: list[tuple[int, float]] = []
        self.evaluations: list[tuple[int, float]] = []

    def sampler(self) -> SamplerSettings:
        """The settings the exported checkpoint will recommend: its samples show what a user gets."""
        return SamplerSettings(steps=self.cfg.seq_len).override(sampler_overrides(self.cfg))

    def evaluate(self) -> tuple[EvalResult, list[str]]:
        """Validation bound (all processes) and sample stories (main process), logged to the trackers."""
        cfg, acc = self.cfg, self.accelerator
        result = validation_bound(
            self.model,
            self.valid_loader,
            acc,
            self.inputs.mask_id,
            cfg.eps,
            cfg.eval_t_samples,
            cfg.seed,
            self.head_only,
        )
        samples: list[str] = []
        if acc.is_main_process and can_sample_unwrapped(acc):
            samples = sample_stories(
                acc.unwrap_model(self.model),
                self.inputs.tokenizer,
                cfg.num_samples,
                cfg.seq_len,
                self.sampler(),
                cfg.seed,
            )
        acc.log(
            {"val/nats_per_token": result.nats_per_token, "val/bits_per_char": result.bits_per_char},
            step=self.progress.step,
        )
        self.evaluations.append((self.progress.step, result.nats_per_token))
        if acc.is_main_process:
            tqdm.write(
                f"step {self.progress.step}: val {result.nats_per_token:.4f} nats/position, "
                f"{result.bits_per_char:.4f} bits/char"
            )
            for i, story in enumerate(samples):
                tqdm.write(f"  sample {i}: {story[:300]!r}")
        return result, samples

    def resume(self) -> None:
        state = resolve_resume(self.cfg.resume, Path(self.cfg.output))
        if state is not None:
            self.progress = load_state(self.accelerator, state)
            if self.accelerator.is_main_process:
                tqdm.write(f"resumed from {state} at step {self.progress.step}")

    def masked_logits(self, x_t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Logits at the masked positions through the prepared model (its wrappers stay in the call)."""
        return logits_at_positions(self.model, self.bare_model, x_t, masked, head_only=self.head_only)

    def train_step(self, batch: dict, micro: int) -> torch.Tensor:
        cfg, acc = self.cfg, self.accelerator
        with acc.accumulate(self.model):
            generator = mask_generator(cfg, acc, self.progress.step, micro)
            loss = diffusion_loss(
                self.masked_logits, batch["input_ids"], self.inputs.mask_id, generator, cfg.eps, cfg.low_discrepancy
            )
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def batches(self):
        """(epoch, batch) from the current position on, skipping what a resumed run already saw."""
        epoch = self.progress.step // self.steps_per_epoch
        skip = (self.progress.step - epoch * self.steps_per_epoch) * self.cfg.grad_accum
        while True:
            self.train_loader.set_epoch(epoch)
            loader = self.accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            skip = 0
            yield from loader
            epoch += 1

    def fit(self) -> Summary:
        """Train to `total_steps`, evaluating and saving on schedule; output/best follows the lowest
        validation bound, output/final is written at the end."""
        cfg, acc, progress = self.cfg, self.accelerator, self.progress
        bar = tqdm(
            total=self.total_steps,
            initial=progress.step,
            disable=not acc.is_local_main_process,
            desc="training",
            dynamic_ncols=True,
        )
        losses: list[torch.Tensor] = []
        postfix = self.bound_postfix() if progress.best_nats is not None else {}  # a resumed run's best
        micro, start, window_start, window_steps = (
            0,
            time.perf_counter() - progress.wall_seconds,
            time.perf_counter(),
            0,
        )
        for batch in self.batches() if progress.step < self.total_steps else ():
            losses.append(self.train_step(batch, micro))
            micro += 1
            if not acc.sync_gradients:
                continue
            micro = 0
            progress.step += 1
            progress.tokens_seen += self.tokens_per_step
            progress.wall_seconds = time.perf_counter() - start
            window_steps += 1
            bar.update(1)
            if progress.step % cfg.log_every == 0 or progress.step == self.total_steps:
                loss = acc.reduce(torch.stack(losses).mean(), "mean").item()
                tok_s = window_steps * self.tokens_per_step / (time.perf_counter() - window_start)
                lr = self.scheduler.get_last_lr()[0]
                self.loss_history.append((progress.step, loss))
                postfix |= {"loss": f"{loss:.3f}", "lr": f"{lr:.2e}", "tok_s": f"{tok_s:,.0f}"}
                bar.set_postfix(postfix)
                acc.log(
                    {
                        "train/loss": loss,
                        "train/lr": lr,
                        "train/tokens_per_s": tok_s,
                        "train/tokens_seen": progress.tokens_seen,
                    },
                    step=progress.step,
                )
                losses, window_start, window_steps = [], time.perf_counter(), 0
            if progress.step % cfg.eval_every == 0 and progress.step < self.total_steps:
                self.keep_if_best(*self.evaluate())  # before saving: the state records the best so far
                postfix |= self.bound_postfix()
                bar.set_postfix(postfix)
            if progress.step % cfg.save_every == 0 and progress.step < self.total_steps:
                save_state(acc, Path(cfg.output), progress, cfg.keep_last)
            if progress.step >= self.total_steps:
                break
        bar.close()
        return self.finish(start)

    def bound_postfix(self) -> dict[str, str]:
        """The progress bar's validation fields (nats/position): the latest bound and the best so far."""
        latest = f"{self.evaluations[-1][1]:.4f}" if self.evaluations else "-"
        return {"val": latest, "best": f"{self.progress.best_nats:.4f}"}

    def training_record(self, result: EvalResult) -> dict:
        """Provenance and metrics of the weights as they are now, for diffusion_config.json and the card."""
        cfg, acc, progress = self.cfg, self.accelerator, self.progress
        return {
            "steps": progress.step,
            "tokens_seen": progress.tokens_seen,
            "val_nats_per_token": round(result.nats_per_token, 5),
            "val_bits_per_char": round(result.bits_per_char, 5),
            "hardware": hardware(acc),
            "wall_seconds": round(progress.wall_seconds, 1),
            "global_batch": cfg.batch_size * cfg.grad_accum * acc.num_processes,
            "train_stories": len(self.inputs.train.dataset),
            "valid_stories": result.num_stories,
            "truncated_fraction": round(self.inputs.train.truncated_fraction, 4),
            "vocab_size": len(self.inputs.tokenizer),
            "seed": cfg.seed,
            "lr": cfg.lr,
        }

    def export(self, result: EvalResult, samples: list[str], name: str) -> Path:
        return export_checkpoint(
            self.accelerator,
            self.model,
            self.inputs.tokenizer,
            self.cfg,
            self.inputs.source,
            self.training_record(result),
            samples,
            name,
        )

    def keep_if_best(self, result: EvalResult, samples: list[str]) -> None:
        """Export output/best when the validation bound is the lowest so far (picks steps by validation)."""
        progress = self.progress
        if progress.best_nats is not None and result.nats_per_token >= progress.best_nats:
            return
        progress.best_nats, progress.best_step = result.nats_per_token, progress.step
        self.export(result, samples, "best")
        if self.accelerator.is_main_process:
            tqdm.write(f"step {progress.step}: best validation bound so far; exported {Path(self.cfg.output) / 'best'}")

    def finish(self, start: float) -> Summary:
        acc, progress = self.accelerator, self.progress
        progress.wall_seconds = time.perf_counter() - start
        result, samples = self.evaluate()
        self.keep_if_best(result, samples)
        save_state(acc, Path(self.cfg.output), progress, self.cfg.keep_last)
        final = self.export(result, samples, "final")
        acc.end_training()
        tok_s = progress.tokens_seen / max(progress.wall_seconds, 1e-9)
        return Summary(final, progress, result, tok_s, self.loss_history, self.evaluations)


def train(cfg: TrainConfig) -> Summary:
    """Run training as configured and return its summary; bad input raises TrainingInputError first."""
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    inputs = build_inputs(cfg, accelerator)
    if accelerator.is_main_process:
        log.info(
            "train: %d stories (%d truncated at %d tokens), valid: %d stories",
            len(inputs.train.dataset),
            inputs.train.num_truncated,
            cfg.seq_len,
            len(inputs.valid.dataset),
        )
        tqdm.write(
            f"data: {len(inputs.train.dataset)} training stories, {inputs.train.num_truncated} "
            f"({inputs.train.truncated_fraction:.1%}) truncated at {cfg.seq_len} tokens; "
            f"{len(inputs.valid.dataset)} validation stories; model "
            f"{sum(p.numel() for p in inputs.model.parameters()) / 1e6:.2f}M parameters"
        )
    trainer = Trainer(cfg, accelerator, inputs)
    if accelerator.is_main_process:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("storydiff", config=tracker_config(cfg))
    trainer.resume()
    return trainer.fit()
