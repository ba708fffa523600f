"""An autoregressive judge of stories, of another family and vocabulary than the masked-diffusion generator.

judge = ensure_judge()                       # the default judge: cached, trained first when missing
scores = score_texts(texts, judge)           # generation perplexity and word statistics
python -m model_training.judge score stories.jsonl --json scores.json
"""

from model_training.judge.config import DEFAULT_VALID, JudgeConfig, cache_dir
from model_training.judge.model import Judge
from model_training.judge.score import compare, score_texts, surprise
from model_training.judge.story_stats import story_statistics
from model_training.judge.train import ensure_judge, train_judge

__all__ = [
    "DEFAULT_VALID",
    "Judge",
    "JudgeConfig",
    "cache_dir",
    "compare",
    "ensure_judge",
    "score_texts",
    "story_statistics",
    "surprise",
    "train_judge",
]
