"""The CPU backends (`--cpu-backend`): ONNX Runtime gives eager's logits and stories, int8 stays within a
stated tolerance, graphs are cached by content, and a missing optional dependency is a one-line error."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from app.diffusion import onnx_graph
from app.diffusion.checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from app.diffusion.cpu_backend import MissingExtra
from app.diffusion.cpu_forward import EagerForward, OnnxForward, OpenVinoForward, select_forward
from app.diffusion.generation import story_steps
from app.engine.model_forward import CheckpointForward
from app.generate_cli import add_generate_arguments, run_generate
from tests.conftest import tiny_distilbert
from tests.support.service import Service, settings_for

INT8_TOLERANCE = {"mean": 0.02, "max": 0.1}
"""How far the int8 forward's distribution at a position may be from fp32 eager's (total variation
distance), on average over the positions and at the worst one; measured on the shipped model: 0.011 and
0.057 (half of a story masked)."""


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint_dir):
    return load_checkpoint(tiny_checkpoint_dir, device="cpu")


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(DEFAULT_MODEL_DIR, device="cpu", dtype="float32")


def padded_batch(ckpt):
    """Three rows, one padded after 20 positions, and (N,) flat query indices as the engine passes them."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1000, 2000, (3, 40), generator=generator)
    x[:, 25:] = ckpt.mask_id
    attention_mask = torch.ones_like(x)
    attention_mask[1, 20:] = 0
    query = (torch.rand(3, 40, generator=generator) < 0.5) & attention_mask.bool()
    return x, query.flatten().nonzero().squeeze(1), attention_mask


FP32_GRAPHS = {"onnx": (OnnxForward, "onnx (onnxruntime)"), "openvino": (OpenVinoForward, "openvino (fp32)")}
"""The backends that run the exported graph in fp32: eager's logits up to float rounding, eager's stories."""


@pytest.mark.parametrize("backend", FP32_GRAPHS)
def test_fp32_graphs_give_eagers_logits(ckpt, tmp_path, backend):
    """fp32 in ONNX Runtime or OpenVINO: the same logits as PyTorch up to float rounding, padded rows included."""
    forward = select_forward(ckpt.model, backend, tmp_path)
    kind, name = FP32_GRAPHS[backend]
    assert isinstance(forward, kind) and forward.name == name
    x, query, attention_mask = padded_batch(ckpt)
    expected = EagerForward(ckpt.model)(x, query, attention_mask)
    torch.testing.assert_close(forward(x, query, attention_mask), expected, atol=1e-4, rtol=1e-4)


def test_onnx_int8_stays_within_the_stated_tolerance(shipped, tmp_path):
    """On the shipped model, a told story with every other word masked and a padded second row: the
    int8 forward's distributions stay within INT8_TOLERANCE of fp32 eager's (total variation distance)."""
    text = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max."
    ids = torch.tensor(shipped.tokenizer(text, add_special_tokens=False)["input_ids"])
    x = torch.stack([ids, ids.roll(5)])  # (2, L)
    x[:, 1::2] = shipped.mask_id
    attention_mask = torch.ones_like(x)
    attention_mask[1, len(ids) // 2 :] = 0
    query = attention_mask.bool()
    expected = EagerForward(shipped.model)(x, query, attention_mask).softmax(-1)  # (N, V)
    got = select_forward(shipped.model, "onnx-int8", tmp_path)(x, query, attention_mask).softmax(-1)
    distance = 0.5 * (got - expected).abs().sum(-1)  # (N,)
    assert distance.mean() <= INT8_TOLERANCE["mean"] and distance.max() <= INT8_TOLERANCE["max"]
    assert distance.max() > 1e-3  # int8 weights really run (fp32 in ONNX Runtime: about 1e-6)


class Counted:
    """A forward that counts its calls: proof that a story really went through it."""

    def __init__(self, forward):
        self.forward, self.calls, self.name = forward, 0, forward.name

    def __call__(self, x, query, attention_mask=None):
        self.calls += 1
        return self.forward(x, query, attention_mask)


@pytest.mark.parametrize("backend", FP32_GRAPHS)
def test_fp32_graphs_write_eagers_stories(ckpt, tmp_path, backend):
    forward = Counted(select_forward(ckpt.model, backend, tmp_path))
    settings = ckpt.config.sampler_settings.model_copy(update={"steps": 12})
    for seed in range(3):
        *_, (_, eager) = story_steps(ckpt, settings, seed, "Once upon", 32)
        *_, (_, onnx) = story_steps(ckpt, settings, seed, "Once upon", 32, forward)
        assert torch.equal(onnx.x, eager.x)
    assert forward.calls >= 3


@pytest.mark.parametrize("backend", FP32_GRAPHS)
def test_the_shipped_model_writes_the_same_story_with_fp32_graphs(shipped, tmp_path, backend):
    settings = shipped.config.settings_for("fast")
    forward = Counted(select_forward(shipped.model, backend, tmp_path))
    *_, (_, eager) = story_steps(shipped, settings, seed=5)
    *_, (_, onnx) = story_steps(shipped, settings, seed=5, forward=forward)
    assert torch.equal(onnx.x, eager.x) and forward.calls > 0


def test_graphs_are_cached_by_content(ckpt, tmp_path, monkeypatch):
    first = onnx_graph.prepared_graph(ckpt.model, "onnx", tmp_path)

    def no_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_graph, "export_encoder", no_export)
    assert onnx_graph.prepared_graph(ckpt.model, "onnx", tmp_path) == first  # reused
    other = tiny_distilbert(ckpt.model.config.vocab_size, seed=1)
    assert onnx_graph.graph_path(other, "onnx", tmp_path) != first  # other weights, other graph
    assert onnx_graph.graph_path(ckpt.model, "onnx-int8", tmp_path) != first


def test_other_devices_run_pytorch(tmp_path):
    model = tiny_distilbert(64).to("meta")  # any device but the CPU: the GPU path is unchanged
    assert isinstance(select_forward(model, "onnx-int8", tmp_path), EagerForward)


@pytest.fixture
def no_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError


def test_a_missing_onnxruntime_is_one_line(ckpt, tmp_path, no_onnxruntime):
    with pytest.raises(MissingExtra) as raised:
        select_forward(ckpt.model, "onnx", tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "onnxruntime" in message and "pip install 'storydiff[cpu]'" in message
    assert isinstance(select_forward(ckpt.model, "auto", tmp_path), EagerForward)  # auto falls back


@pytest.mark.parametrize("module", ["openvino", "onnxruntime"])
def test_a_missing_openvino_is_one_line(ckpt, tmp_path, monkeypatch, module):
    """Either library of the openvino extra missing: one line naming it and the extra."""
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra) as raised:
        select_forward(ckpt.model, "openvino", tmp_path)
    message = str(raised.value)
    assert "\n" not in message and f"openvino needs {module}" in message
    assert "pip install 'storydiff[openvino]'" in message


def test_generate_says_what_is_missing_in_one_line(tiny_checkpoint_dir, no_onnxruntime, capsys):
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_checkpoint_dir), "--cpu-backend", "onnx", "--seed", "1"])
    assert run_generate(args) != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "onnxruntime" in error and "storydiff[cpu]" in error


def test_the_engines_forward_prepares_its_backend_before_any_pass(ckpt):
    forward = CheckpointForward(ckpt, cpu_backend="onnx")
    assert forward.name == "onnx (not prepared yet)"
    forward.prepare()  # what Engine.warm_up calls, off the event loop
    assert forward.name == "onnx (onnxruntime)"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("backend", "name"), [("onnx-int8", "onnx-int8 (onnxruntime)"), ("openvino", "openvino (fp32)")]
)
async def test_info_names_the_cpu_backend(tiny_checkpoint_dir, backend, name):
    """The server runs the backend it is given (OpenVINO too) and says so; a story comes out of it."""
    async with Service(settings_for(tiny_checkpoint_dir, cpu_backend=backend)) as client:
        assert (await client.get("/info")).json()["forward"] == name
        answer = await client.post("/generate", json={"seed": 1, "steps": 4, "length": 16})
        assert answer.status_code == 200 and answer.json()["forwards"] > 0
