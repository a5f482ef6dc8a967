"""int8 versions of an ONNX model, made with onnxruntime's quantisation tools (not torch.ao's eager path).

- `dynamic` (variant int8): the weights of MatMul, Gemm (every nn.Linear, attention's projections) and
  Gather (embedding tables) stored as int8, activations quantised at run time; convolutions stay float.
  Measured here: onnxruntime's dynamic ConvInteger ran a conv encoder 3.7x slower than float at batch 32.
- `static` (variant int8-static): Conv, MatMul and Gemm quantised in QDQ form, weights per channel,
  activation ranges calibrated (min-max) on records of the sites' training split.

The graph is first run through onnxruntime's quantisation pre-processing (shape inference, graph
optimisation), as its documentation recommends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mmfed.errors import MMFedError

DYNAMIC_OPS = ["MatMul", "Gemm", "Gather"]
STATIC_OPS = ["Conv", "MatMul", "Gemm"]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantiser prints and logs tensor protos and advice; none of it is for the user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _prepared(src: Path, folder: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    out = folder / "prepared.onnx"
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def _run(what: str, src: Path, dst: Path, quantize: Callable[[Path], None]) -> Path:
    try:
        with _quiet():
            quantize(Path(src))
    except MMFedError:
        raise
    except Exception as exc:  # onnxruntime's tools raise plain RuntimeError/ValueError/pybind errors
        raise MMFedError(
            f"{src}: {what} quantisation failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "leave that variant out of --variants"
        ) from None
    return Path(dst)


def quantize_dynamic(src: Path, dst: Path) -> Path:
    """`dst`: `src` with int8 weights for MatMul, Gemm and Gather, activations quantised at run time."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    def work(path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".quantize-") as tmp:
            ort_dynamic(
                str(_prepared(path, Path(tmp))),
                str(dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=DYNAMIC_OPS,
            )

    return _run("dynamic int8", src, dst, work)


def quantize_static(src: Path, dst: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """`dst`: `src` with Conv, MatMul and Gemm in int8 (QDQ, per-channel weights), activation ranges from
    the `calibration` batches (graph inputs, e.g. records of the training split)."""
    if not calibration:
        raise MMFedError("int8-static needs calibration records (the --test-site directories' train split)")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    class Reader(CalibrationDataReader):
        """The calibration batches, once through (min-max calibration reads them once)."""

        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    def work(path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".quantize-") as tmp:
            ort_static(
                str(_prepared(path, Path(tmp))),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=STATIC_OPS,
            )

    return _run("static int8", src, dst, work)
