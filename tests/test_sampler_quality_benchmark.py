"""benchmarks/sampler_quality.py on a tiny model: both judges' columns, against the held-out stories' row."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from model_training.judge import Judge, surprise

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "sampler_quality.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sampler_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(tiny_checkpoint_dir, tmp_path, monkeypatch, ar_judge: str, *extra: str) -> list[dict]:
    sampler_quality = load_benchmark()
    out, table = tmp_path / "rows.json", tmp_path / "table.md"
    model = str(tiny_checkpoint_dir)
    argv = ["sampler_quality", "--model", model, "--judge", model, "--ar-judge", ar_judge, "--stories", "2"]
    argv += ["--only", "random T=24 temp 0.7 length-first", "--threads", "1", "--json", str(out), "--table", str(table)]
    monkeypatch.setattr(sys, "argv", [*argv, *extra])
    sampler_quality.main()
    return json.loads(out.read_text())


def test_the_onnx_backend_writes_eagers_stories_and_says_so(tiny_checkpoint_dir, tmp_path, monkeypatch):
    """`--cpu-backend onnx` (how the revision grid's later rows were written) changes speed, not stories."""
    monkeypatch.setenv("STORYDIFF_CACHE_DIR", str(tmp_path / "cache"))
    eager = run(tiny_checkpoint_dir, tmp_path, monkeypatch, "none")[1]
    onnx = run(tiny_checkpoint_dir, tmp_path, monkeypatch, "none", "--cpu-backend", "onnx")[1]
    assert eager["cpu_backend"] == "eager" and onnx["cpu_backend"] == "onnx (onnxruntime)"
    assert onnx["examples"] == eager["examples"] and onnx["judge_bpc"] == pytest.approx(eager["judge_bpc"])


def test_skip_leaves_out_the_labels_containing_it(tiny_checkpoint_dir):
    from app.diffusion.checkpoint import load_checkpoint

    sampler_quality = load_benchmark()
    ckpt = load_checkpoint(tiny_checkpoint_dir)
    labels = [label for label, _ in sampler_quality.settings_to_measure(ckpt, False, None, "revision", "revision")]
    assert labels and not any("revision" in label for label in labels)
    assert len(labels) == 3 + len(sampler_quality.EQUAL_FORWARDS_STEPS)


def test_rows_show_the_ar_judge_beside_the_elbo_judge(tiny_checkpoint_dir, tiny_judge_dir, tmp_path, monkeypatch):
    rows = run(tiny_checkpoint_dir, tmp_path, monkeypatch, str(tiny_judge_dir))
    held_out, written = rows
    assert written["label"] == "random T=24 temp 0.7 length-first"
    assert written["settings"]["steps"] == 24 and written["settings"]["endings"] == "length_first"
    assert written["broken"] == 0.0 and written["stories"] == 2
    judge = Judge.load(tiny_judge_dir)
    assert written["ar_ppl"] == pytest.approx(surprise(judge, written["examples"]).perplexity)
    assert held_out["ar_ppl_ratio"] == 1.0
    assert written["ar_ppl_ratio"] == pytest.approx(written["ar_ppl"] / held_out["ar_ppl"])
    assert written["ar_ppl_ratio"] > 1  # random weights write word salad
    for row in rows:
        assert row["judge_bpc"] > 0 and 0 <= row["distinct2_story"] <= 1 and row["word_entropy_pooled"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "AR judge perplexity (× real)" in table
    assert f"{written['ar_ppl']:.2f} ({written['ar_ppl_ratio']:.3f}×)" in table


def test_no_ar_judge_leaves_its_columns_empty(tiny_checkpoint_dir, tmp_path, monkeypatch, capsys):
    rows = run(tiny_checkpoint_dir, tmp_path, monkeypatch, "none")
    assert all(row["ar_ppl"] is None and row["ar_ppl_ratio"] is None for row in rows)
    assert "AR ppl" in capsys.readouterr().out


def test_render_writes_the_table_and_plot_from_the_json_alone(
    tiny_checkpoint_dir, tiny_judge_dir, tmp_path, monkeypatch
):
    rows = run(tiny_checkpoint_dir, tmp_path, monkeypatch, str(tiny_judge_dir))
    table, picture = tmp_path / "again.md", tmp_path / "plot.png"
    argv = ["sampler_quality", "--render", str(tmp_path / "rows.json"), "--table", str(table), "--plot", str(picture)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark().main()
    assert table.read_text() == (tmp_path / "table.md").read_text()  # the same table, with no model run
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| broken |" in table.read_text() and rows[1]["label"] in table.read_text()


def test_a_word_after_an_end_token_is_a_broken_story():
    fragmented = load_benchmark().fragmented
    assert fragmented([7, 8, 0, 9, 0], {0, 102}) and fragmented([7, 102, 0, 9], {0, 102})
    assert not fragmented([7, 8, 102, 0, 0], {0, 102}) and not fragmented([7, 8, 9], {0, 102})


def test_rescore_recomputes_the_ar_columns_from_the_stored_texts(
    tiny_checkpoint_dir, tiny_judge_dir, tmp_path, monkeypatch
):
    rows = run(tiny_checkpoint_dir, tmp_path, monkeypatch, str(tiny_judge_dir))
    spoiled = [row | {"ar_ppl": 1.0, "ar_ppl_ratio": 9.0} for row in rows]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(spoiled))
    model = str(tiny_checkpoint_dir)
    argv = ["sampler_quality", "--model", model, "--ar-judge", str(tiny_judge_dir), "--rescore", str(path)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark().main()
    again = json.loads(path.read_text())
    for before, after in zip(rows, again, strict=True):
        assert after["ar_ppl"] == pytest.approx(before["ar_ppl"]) and after["ar_ppl_ratio"] == pytest.approx(
            before["ar_ppl_ratio"]
        )
        assert after["texts" if "texts" in before else "label"] == before["texts" if "texts" in before else "label"]


def test_the_grid_row_named_the_shipped_default_has_the_shipped_default_settings():
    """docs/story-quality.md reads that row as the default: it must be what the server runs."""
    from app.diffusion.checkpoint import DEFAULT_MODEL_DIR
    from app.diffusion.diffusion_config import DiffusionConfig
    from app.diffusion.sampler_settings import SamplerOverrides

    sampler_quality = load_benchmark()
    shipped = DiffusionConfig.load(DEFAULT_MODEL_DIR / "diffusion_config.json").sampler_settings
    fields = dict(sampler_quality.QUALITY_GRID)[sampler_quality.SHIPPED_DEFAULT]
    row = shipped.override(SamplerOverrides(**(sampler_quality.GRID_BASE | fields)))
    # block_length only orders the confidence-ranked rules; random remasking ignores it
    assert row.model_copy(update={"block_length": shipped.block_length}) == shipped


def test_the_revision_grid_is_the_shipped_default_at_three_step_counts_without_and_with_revisions():
    """docs/story-quality.md reads these rows as the shipped default with more steps and revisions, and
    without revisions at the steps that cost about as many forwards (`EQUAL_FORWARDS_STEPS`)."""
    from app.diffusion.checkpoint import DEFAULT_MODEL_DIR
    from app.diffusion.diffusion_config import DiffusionConfig
    from app.diffusion.sampler_settings import SamplerOverrides

    sampler_quality = load_benchmark()
    shipped = DiffusionConfig.load(DEFAULT_MODEL_DIR / "diffusion_config.json").sampler_settings
    rows = {
        label: shipped.override(SamplerOverrides(**(sampler_quality.GRID_BASE | fields)))
        for label, fields in sampler_quality.REVISION_GRID
    }
    expected = [(steps, eta) for steps in (128, 256, 512) for eta in (0.0, sampler_quality.REVISION_ETA)]
    expected += [(steps, 0.0) for steps in sampler_quality.EQUAL_FORWARDS_STEPS]
    assert sorted((row.steps, row.revision) for row in rows.values()) == sorted(expected)
    for row in rows.values():
        unchanged = row.model_copy(update={"steps": shipped.steps, "revision": 0.0, "block_length": None})
        assert unchanged == shipped.model_copy(update={"block_length": None})
        assert row.revision == 0 or "revision" in next(label for label, r in rows.items() if r == row)


def test_runs_measured_apart_render_as_one_table_against_their_shared_reference(
    tiny_checkpoint_dir, tiny_judge_dir, tmp_path, monkeypatch
):
    """A second run takes the first's reference row (`--reference-from`) and `--render` joins the two."""
    first = run(tiny_checkpoint_dir, tmp_path, monkeypatch, str(tiny_judge_dir))
    model, second = str(tiny_checkpoint_dir), tmp_path / "second.json"
    argv = ["sampler_quality", "--model", model, "--judge", model, "--ar-judge", str(tiny_judge_dir), "--stories", "2"]
    argv += ["--only", "random T=64 temp 0.75 length-first", "--threads", "1", "--json", str(second)]
    argv += ["--reference-from", str(tmp_path / "rows.json")]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark().main()
    rows = json.loads(second.read_text())
    assert rows[0] == first[0] and rows[1]["label"] == "random T=64 temp 0.75 length-first"
    table = tmp_path / "both.md"
    monkeypatch.setattr(sys, "argv", ["sampler_quality", "--render", str(tmp_path / "rows.json"), str(second),
                                      "--table", str(table)])  # fmt: skip
    load_benchmark().main()
    lines = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {row['label']}" for row in [*first, rows[1]]]
    (tmp_path / "other.json").write_text(json.dumps([first[0] | {"label": "other"}, rows[1]]))
    monkeypatch.setattr(sys, "argv", ["sampler_quality", "--render", str(second), str(tmp_path / "other.json")])
    with pytest.raises(SystemExit, match="different references"):
        load_benchmark().main()
