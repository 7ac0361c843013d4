"""The model exports to ONNX (torch's dynamo exporter) with a dynamic batch, and onnxruntime's outputs equal eager.

onnx, onnxscript and onnxruntime are not vstmon's dependencies: the test skips without them (install them to
run it: ``pip install onnx onnxscript onnxruntime``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.swin import tiny_model

pytestmark = pytest.mark.slow  # ~15-30 s of export on a CPU


def test_a_padding_and_shifting_model_exports_to_onnx_with_a_dynamic_batch(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model()  # tokens 4 x 10 x 10: every stage pads and shifts, several heads
    model.prepare((8, 40, 40), "cpu")
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.onnx.export(
        model, (torch.randn(2, 3, 8, 40, 40),), dynamo=True, dynamic_shapes=({0: batch},)
    )
    program.save(str(tmp_path / "swin.onnx"))
    session = ort.InferenceSession(str(tmp_path / "swin.onnx"))
    name = session.get_inputs()[0].name
    for n in (1, 3):
        x = torch.randn(n, 3, 8, 40, 40)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {name: x.numpy()})[0], expected, atol=1e-5, rtol=1e-5)
