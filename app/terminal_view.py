"""A rich renderable of a denoising sequence: masks visible, fresh tokens highlighted by probability."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from app.diffusion.text import MASK_PLACEHOLDER, FixedSpan, story_end


def probability_style(p: float) -> str:
    """Fresh tokens: green when the model was sure, yellow in between, red when it guessed."""
    colour = "green" if p >= 0.6 else "yellow" if p >= 0.25 else "red"
    return f"bold black on {colour}"


def sequence_text(
    ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, fresh: dict[int, float], typed: Sequence[FixedSpan] = ()
) -> Text:
    """The sequence up to the story's end: masks dim, `fresh` positions (pos -> p) highlighted, `typed`
    text as typed (its tokens may be [UNK])."""
    text = Text()
    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    starts, inside = {span.start: span for span in typed}, {p for span in typed for p in range(span.start, span.end)}
    for pos, token_id in enumerate(ids[: story_end(ids, tokenizer)]):
        if pos in starts:
            text.append(" " + starts[pos].text.strip(), "bold")
        if pos in inside:
            continue
        if token_id == tokenizer.mask_token_id:
            piece, style = MASK_PLACEHOLDER, "grey42"
        elif token_id in special:
            continue
        else:
            token = tokenizer.convert_ids_to_tokens(token_id)
            assert isinstance(token, str)  # one id gives one token (a list of ids, a list)
            piece, style = token, ""
        if pos in fresh:
            style = probability_style(fresh[pos])
        if piece.startswith("##"):
            text.append(piece[2:], style)
        else:
            text.append(" ")
            text.append(piece, style)
    return text


def step_view(
    ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    fresh: dict[int, float],
    step: int,
    num_steps: int,
    t: float,
    elapsed_s: float,
    typed: Sequence[FixedSpan] = (),
) -> Panel:
    """The live panel: step counters and a progress bar on top (never cropped), then the sequence."""
    masked = sum(1 for i in ids if i == tokenizer.mask_token_id)
    rate = step / elapsed_s if elapsed_s > 0 else 0.0
    status = Text(
        f"step {step}/{num_steps}  t={t:.3f}  masked {masked}/{len(ids)}  {elapsed_s:.1f}s  {rate:.1f} steps/s",
        style="cyan",
    )
    bar = ProgressBar(total=num_steps, completed=step)
    return Panel(Group(status, bar, Text(), sequence_text(ids, tokenizer, fresh, typed)), title="storydiff")
