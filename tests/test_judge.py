"""The autoregressive judge: seeded training, a score that tells stories from word salad, and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model_training.judge import JudgeConfig, cache_dir, score_texts, surprise, train_judge
from model_training.judge.cli import main
from model_training.judge.model import Judge
from model_training.judge.score import shuffled_words
from model_training.judge.train import read_stories, split_dev
from tests.support.judge_fixtures import TINY_JUDGE_FLAGS, TRAIN, VALID


def tiny_config(**changes) -> JudgeConfig:
    """The fixture's config, built from the same flags the fixture gave the CLI."""
    from app.flags import given_fields
    from model_training.judge.cli import build_parser

    args = build_parser().parse_args(["train", *TINY_JUDGE_FLAGS])
    return JudgeConfig(**given_fields(args, JudgeConfig.model_fields)).model_copy(update=changes)


def test_the_same_seed_trains_the_same_judge_and_another_seed_does_not():
    short = tiny_config(steps=12, eval_every=6)
    first, again = train_judge(short, progress=False), train_judge(short, progress=False)
    assert first.tokenizer.to_str() == again.tokenizer.to_str()
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    stories = read_stories([VALID])[:8]
    assert surprise(first, stories) == surprise(again, stories)

    other = train_judge(short.model_copy(update={"seed": 1}), progress=False)
    assert not torch.equal(other.model.transformer.h[0].mlp.c_fc.weight, first.model.transformer.h[0].mlp.c_fc.weight)


def test_real_stories_are_more_plausible_than_their_words_shuffled(tiny_judge_dir):
    judge = Judge.load(tiny_judge_dir)
    stories = read_stories([VALID])
    real = surprise(judge, stories)
    salad = surprise(judge, [shuffled_words(s, i) for i, s in enumerate(stories)])
    assert real.perplexity < 0.8 * salad.perplexity
    assert judge.info["valid"]["ppl"] == pytest.approx(real.perplexity)  # training measured the same thing
    assert real.perplexity < judge.tokenizer.get_vocab_size() / 4  # it learned more than a uniform guess


def test_training_keeps_the_weights_of_the_best_dev_evaluation():
    rising = tiny_config(steps=12, eval_every=3, lr=0.5, warmup=12)  # the learning rate grows too large
    judge = train_judge(rising, progress=False)
    curve = [point["dev_ppl"] for point in judge.info["curve"]]
    assert judge.info["best_step"] == 3 and curve[0] == min(curve) < curve[-1]  # the best is not the last
    _, dev = split_dev(read_stories(rising.train), rising.dev_fraction, rising.seed)
    assert surprise(judge, dev).perplexity == pytest.approx(judge.info["dev_ppl"]) == curve[0]


def test_score_texts_reports_perplexity_beside_word_statistics(tiny_judge_dir):
    judge = Judge.load(tiny_judge_dir)
    texts = ["Once upon a time, there was a cat.\nThe cat sat.", "The dog ran and ran and ran and ran."]
    scores = score_texts(texts, judge)
    assert scores["judge_ppl"] == surprise(judge, texts).perplexity
    assert scores["judge_ppl"] == score_texts([" ".join(t.split()) for t in texts], judge)["judge_ppl"]  # one line
    assert scores["stories"] == 2 and scores["words"] == pytest.approx((11 + 9) / 2)


def test_the_cache_folder_names_the_config_and_the_training_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYDIFF_JUDGE_DIR", str(tmp_path / "judges"))
    data = tmp_path / "train.txt"
    data.write_text(TRAIN.read_text())
    cfg = tiny_config(train=[str(data)])
    folder = cache_dir(cfg)
    assert folder.parent == tmp_path / "judges" and len(folder.name) == 12
    assert cache_dir(cfg.model_copy(update={"steps": 81})) != folder
    data.write_text(TRAIN.read_text() + "One more story.\n<|endoftext|>\n")
    assert cache_dir(cfg) != folder


def test_score_cli_scores_jsonl_beside_the_real_stories(tiny_judge_dir, tmp_path, capsys):
    stories = read_stories([VALID])[:6]
    real, salad = tmp_path / "real.jsonl", tmp_path / "salad.jsonl"
    real.write_text("".join(json.dumps({"text": s, "seed": i}) + "\n" for i, s in enumerate(stories)))
    salad.write_text("".join(json.dumps({"text": shuffled_words(s, i)}) + "\n" for i, s in enumerate(stories)))
    out, table = tmp_path / "report.json", tmp_path / "table.md"
    argv = ["score", str(real), str(salad), "--dir", str(tiny_judge_dir), "--valid", str(VALID), "--json", str(out)]
    assert main([*argv, "--table", str(table), "--control"]) == 0
    report = json.loads(out.read_text())
    judge = Judge.load(tiny_judge_dir)
    assert report["reference"]["judge_ppl"] == pytest.approx(surprise(judge, read_stories([VALID])).perplexity)
    assert report["reference"]["stories"] == 60
    for name, texts in ((str(real), stories), (str(salad), None)):
        row = report[name]
        assert row["judge_ppl_ratio"] == pytest.approx(row["judge_ppl"] / report["reference"]["judge_ppl"])
        if texts is not None:
            assert row["judge_ppl"] == pytest.approx(surprise(judge, texts).perplexity)
    assert report[str(salad)]["judge_ppl_ratio"] > report[str(real)]["judge_ppl_ratio"]
    printed = capsys.readouterr().out
    assert "real: valid.txt" in printed and "salad.jsonl" in printed
    rows = table.read_text().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| real: valid.txt", "| real.jsonl", "| salad.jsonl", "| control: real, words shuffled"
    ]  # fmt: skip
    assert report["control: real, words shuffled"]["judge_ppl_ratio"] > 1.25
    assert f"| {report[str(salad)]['judge_ppl']:.2f} | {report[str(salad)]['judge_ppl_ratio']:.3f} |" in rows[2]


def test_the_module_runs_as_a_command(tiny_judge_dir, tmp_path):
    stories = tmp_path / "stories.jsonl"
    stories.write_text(json.dumps({"text": "Once upon a time, there was a little dog."}) + "\n")
    argv = ["score", str(stories), "--dir", str(tiny_judge_dir), "--valid", str(VALID), "--quiet"]
    done = subprocess.run([sys.executable, "-m", "model_training.judge", *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "stories.jsonl" in done.stdout and "judge ppl" in done.stdout


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "A story."}', '{"story": "no text field"}'], "bad.jsonl:2: no string field 'text'"),
        (["not json"], "bad.jsonl:1: not JSON"),
        ([""], "bad.jsonl: no stories"),
    ],
)
def test_bad_jsonl_is_one_line_naming_the_line(tiny_judge_dir, tmp_path, capsys, lines, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["score", str(bad), "--dir", str(tiny_judge_dir), "--valid", str(VALID)]) == 2
    assert message in capsys.readouterr().err


def test_bad_options_fail_before_any_training(tmp_path, capsys):
    assert main(["train", "--steps", "0", "--dir", str(tmp_path / "judge")]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "missing.jsonl"), "--dir", str(tmp_path / "judge")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--valid", str(tmp_path / "valid.txt"), "--dir", str(tmp_path / "judge")]) == 2
    assert "valid.txt' does not exist (--valid)" in capsys.readouterr().err
    assert not (tmp_path / "judge").exists()
