"""The model's encoder as an ONNX graph, exported once per checkpoint and cached.

The graph takes (input_ids, attention_mask), both (B, L) int64 with dynamic B and L, and returns the
encoder's last hidden states (B, L, D); the vocabulary head stays in PyTorch so that it runs at the
queried positions only (`logits.py`). The file is keyed by a hash of the weights, the backend and the
exporter's and runtime's versions, so a changed checkpoint or library never reuses a stale graph.
Export works on a copy: PyTorch's tracer leaves the traced module changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import PreTrainedModel

from app.diffusion.cpu_backend import missing_extra
from app.diffusion.logits import attention_bias

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1
"""Bumped when the exported graph's inputs, outputs or export settings change."""


class _Encoder(torch.nn.Module):
    """The masked LM's encoder with a (B, L) padding mask, as the graph's inputs and output."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bias = attention_bias(self.model, attention_mask)  # (B, 1, 1, L)
        hidden: torch.Tensor = self.model.base_model(input_ids=input_ids, attention_mask=bias).last_hidden_state
        return hidden  # (B, L, D)


UNHASHED_CONFIG = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
"""Config fields that say where or how a model was loaded, not what it computes."""


def weights_digest(model: PreTrainedModel) -> str:
    """A hash of the model's config and every weight's name, dtype and bytes: the same checkpoint loaded
    from another path gives the same digest."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in UNHASHED_CONFIG}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().data)  # raw bytes, any dtype
    return digest.hexdigest()


def graph_path(model: PreTrainedModel, backend: str, cache: Path) -> Path:
    """Where `backend`'s graph of `model` is cached."""
    import onnxruntime

    versions = f"torch{torch.__version__.split('+')[0]}-ort{onnxruntime.__version__}-g{GRAPH_FORMAT}"
    return cache / "forwards" / f"{weights_digest(model)[:24]}-{backend}-{versions}.onnx"


def prepared_graph(model: PreTrainedModel, backend: str, cache: Path) -> Path:
    """The cached graph of `model` for `backend` ("onnx" or "onnx-int8"), exported (and quantized) now
    if missing, with a log line per stage; written to a temporary name first, so a crash leaves none."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise missing_extra(backend, "onnxruntime") from None
    path = graph_path(model, backend, cache)
    if path.is_file():
        log.info("%s forward: reusing the prepared graph %s", backend, path.name)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("%s forward: exporting the encoder to ONNX (first start only; cached in %s)", backend, path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        export_encoder(model, fp32)
        log.info("%s forward: exported in %.1fs", backend, time.perf_counter() - started)
        made = fp32
        if backend == "onnx-int8":
            made = Path(scratch) / "int8.onnx"
            quantize_int8(fp32, made)
            log.info("%s forward: int8 weights quantized in %.1fs", backend, time.perf_counter() - started)
        os.replace(made, path)
    log.info("%s forward: prepared %s in %.1fs", backend, path.name, time.perf_counter() - started)
    return path


def export_encoder(model: PreTrainedModel, path: Path) -> None:
    """Export the fp32 encoder of a copy of `model` with dynamic batch and length."""
    try:
        import onnx  # noqa: F401  # the exporter writes its protobuf
    except ImportError:
        raise missing_extra("onnx", "onnx") from None
    fp32 = copy.deepcopy(model)
    torch.nn.Module.to(fp32, torch.float32)  # transformers' own `to` stubs refuse a dtype
    torch.nn.Module.train(fp32, False)
    encoder = _Encoder(fp32)
    length = min(16, int(getattr(model.config, "max_position_embeddings", 16)))
    ids = torch.zeros((2, length), dtype=torch.long)
    mask = torch.ones_like(ids)
    dynamic = {0: "batch", 1: "length"}
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns of Python branches on shapes; the ones in this encoder do not depend on B or L
        # (tests/test_cpu_forward.py runs other shapes and padded rows against PyTorch).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            encoder,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "hidden": dynamic},
            opset_version=17,
            dynamo=False,  # the tracer: seconds, where the dynamo exporter takes far longer for the same graph
        )


def quantize_int8(source: Path, target: Path) -> None:
    """int8 weights for the graph's matrix multiplications (activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_quantizer_chatter)  # it logs a line per tensor through the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(_quantizer_chatter)


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    """Keep warnings and errors that go straight to the root logger; drop its info lines."""
    return record.levelno >= logging.WARNING
