"""Export the transfer network (+ the predictor's CIN heads) to ONNX, and run it with onnxruntime.

Why: on a CPU, onnxruntime's convolution kernels (MLAS) run the network's small-channel convs
1.3-1.9x as fast as XLA:CPU's (``bench/infer.py`` has both rows), so for CPU deployment the
exported graph is the fast path. Training, the style predictor (VGG16 statistics + MLP, once per
style) and every GPU path stay in JAX.

The graph (opset 17, NCHW inside, NHWC at the edges like the rest of the package):

* inputs ``content`` ``[N, H, W, 3]`` float32 RGB in [0, 1] (any N, H, W >= 8: the graph
  reflect-pads H and W to multiples of 4 at the bottom/right, as the
  :class:`~arbitrary_nst.inference.Stylizer` does, and crops back; :class:`OnnxTransfer` pads
  smaller images to 8 itself) and ``embedding`` ``[N, D]`` float32 (the style embedding:
  mixtures and the strength knob are computed on it before the call);
* the 13 CIN heads (``embedding @ kernel + bias`` -> gamma, beta) are ``Gemm`` nodes, so one
  exported file covers every style;
* convs are ``Pad(reflect)`` + ``Conv`` (VALID, no bias), instance norms are
  ``InstanceNormalization`` (eps 1e-5, biased variance: :func:`~arbitrary_nst.models.transfer.
  instance_norm`), CIN multiplies/adds the per-example gamma/beta, upsampling is ``Resize``
  nearest (``asymmetric``/``floor``: exact pixel repetition), then ``Sigmoid`` and a ``Slice``
  back to ``H x W``;
* output ``stylized`` ``[N, H, W, 3]`` float32 in [0, 1].

``tests/test_onnx_export.py`` checks that onnxruntime on the exported graph equals the JAX
forward (max abs difference < 1e-4 on random and trained weights, odd sizes, batch 2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, ModelError
from .files import write_atomically
from .models import ArbitraryStyleModel
from .models.transfer import CIN_LAYER_NAMES, EPS

OPSET = 17


class _GraphBuilder:
    """Tiny helper around ``onnx.helper`` that names nodes/tensors and collects initializers."""

    def __init__(self):
        import onnx  # noqa: F401 - fail early with a clear error if missing
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str | None = None, **attrs) -> str:
        from onnx import helper
        out = self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _np(x) -> np.ndarray:
    return np.asarray(x[...], np.float32)


def transfer_graph(model: ArbitraryStyleModel, *, name: str = "arbitrary_nst_transfer"):
    """The ONNX ``ModelProto`` of ``model``'s CIN heads + transfer network (see module doc)."""
    import onnx
    from onnx import TensorProto, helper

    net, pred = model.transfer_net, model.predictor
    g = _GraphBuilder()
    d = pred.embedding_dim

    # Per-layer gamma/beta [N, C, 1, 1] from the embedding (the predictor's heads).
    axes_hw = g.const("axes_hw", np.array([2, 3], np.int64))
    gb: dict[str, tuple[str, str]] = {}
    for lname in CIN_LAYER_NAMES:
        head = pred.heads[lname]
        k, b, c = _np(head.kernel), _np(head.bias), head.channels
        out = []
        for part, sl in (("gamma", slice(0, c)), ("beta", slice(c, 2 * c))):
            y = g.op("Gemm", ["embedding", g.const(f"{lname}_{part}_w", k[:, sl]),
                              g.const(f"{lname}_{part}_b", b[sl])], f"{lname}_{part}")
            out.append(g.op("Unsqueeze", [y, axes_hw], f"{lname}_{part}4d"))
        gb[lname] = (out[0], out[1])

    def conv(x: str, module, base: str) -> str:
        k = np.transpose(_np(module.kernel), (3, 2, 0, 1))  # HWIO -> OIHW
        p = module.kernel_size // 2
        if p:
            pads = g.const(f"{base}_pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64))
            x = g.op("Pad", [x, pads], f"{base}_pad", mode="reflect")
        return g.op("Conv", [x, g.const(f"{base}_w", k)], base,
                    strides=[module.stride, module.stride],
                    kernel_shape=[module.kernel_size, module.kernel_size])

    def inorm(x: str, scale: np.ndarray, offset: np.ndarray, base: str) -> str:
        return g.op("InstanceNormalization",
                    [x, g.const(f"{base}_scale", scale), g.const(f"{base}_offset", offset)],
                    base, epsilon=EPS)

    def cin(x: str, lname: str) -> str:
        c = pred.heads[lname].channels
        x = inorm(x, np.ones(c, np.float32), np.zeros(c, np.float32), f"{lname}_in")
        gamma, beta = gb[lname]
        return g.op("Add", [g.op("Mul", [x, gamma]), beta], f"{lname}_cin")

    x = g.op("Transpose", ["content"], "to_nchw", perm=[0, 3, 1, 2])
    # Reflect-pad H, W to multiples of 4 (the two stride-2 convs and the x2 upsamplings give
    # 4 * ceil(H / 4)): as Stylizer pads; without it a raw onnxruntime call on an 85 px high
    # image differed from the Stylizer in a 12-20 px band along the bottom (up to 0.19).
    hw = g.op("Slice", [g.op("Shape", ["content"]), g.const("s1", np.array([1], np.int64)),
                        g.const("s3", np.array([3], np.int64))], "content_hw")
    four = g.const("four", np.array([4, 4], np.int64))
    extra = g.op("Mod", [g.op("Sub", [four, g.op("Mod", [hw, four])]), four], "pad_hw")
    pads = g.op("Concat", [g.const("zeros6", np.zeros(6, np.int64)), extra], "pads", axis=0)
    x = g.op("Pad", [x, pads], "pad_to_4", mode="reflect")
    ct = net.contract
    for i in (1, 2, 3):
        norm = ct[f"norm{i}"]
        x = conv(x, ct[f"conv{i}"], f"contract_conv{i}")
        x = g.op("Relu", [inorm(x, _np(norm.scale), _np(norm.offset), f"contract_norm{i}")])
    for i in range(1, 6):
        n1, n2 = f"residual{i}_conv1", f"residual{i}_conv2"
        r = g.op("Relu", [cin(conv(x, net.residual[n1], n1), n1)])
        x = g.op("Add", [x, cin(conv(r, net.residual[n2], n2), n2)], f"residual{i}")
    scales = g.const("scales_x2", np.array([1, 1, 2, 2], np.float32))
    for lname in ("expand_conv1", "expand_conv2"):
        x = g.op("Resize", [x, "", scales], f"{lname}_up", mode="nearest",
                 coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        x = g.op("Relu", [cin(conv(x, net.expand[lname], lname), lname)])
    y = g.op("Sigmoid", [cin(conv(x, net.expand["expand_conv3"], "expand_conv3"),
                             "expand_conv3")])
    # Crop back to the input's H x W.
    y = g.op("Slice", [y, g.const("zeros2", np.array([0, 0], np.int64)), hw, axes_hw], "crop")
    g.nodes.append(helper.make_node("Transpose", [y], ["stylized"], name="to_nhwc",
                                    perm=[0, 2, 3, 1]))

    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("content", TensorProto.FLOAT, ["N", "H", "W", 3]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("stylized", TensorProto.FLOAT, ["N", "H", "W", 3])],
        g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="arbitrary_nst")
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime >= 1.14
    meta = proto.metadata_props.add()
    meta.key, meta.value = "arbitrary_nst.model_config", repr(model.config())
    onnx.checker.check_model(proto)
    return proto


def save_transfer_onnx(model: ArbitraryStyleModel, path: str | os.PathLike, *,
                       check: Callable[[bytes], None] | None = None) -> Path:
    """Write :func:`transfer_graph` to ``path`` atomically (temp file + rename); returns it.

    ``check(data)``, if given, is called on the serialized graph before anything is written:
    an exception from it leaves ``path`` as it was (``export-onnx`` runs its onnxruntime check
    there, so that a graph that fails it neither appears nor replaces a good file)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":  # (.ONNX passed the CLI's check, then was refused)
        raise ConfigError(f"{path}: the ONNX export's file name must end in .onnx")
    if not path.parent.is_dir():
        why = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise ConfigError(f"{path.parent}: output folder {why}")
    data = transfer_graph(model).SerializeToString()
    if check is not None:
        check(data)
    # any interruption (Ctrl-C too) removes the temporary file; the mode is open()'s
    return write_atomically(path, lambda f: f.write(data))


class OnnxTransfer:
    """The exported transfer network on onnxruntime (CPU by default).

    ``OnnxTransfer(model_or_path)``: an :class:`~arbitrary_nst.models.ArbitraryStyleModel`
    (exported in memory), a ``.onnx`` file from :func:`save_transfer_onnx`, or that file's
    bytes.
    ``transfer(content, embedding)``: ``[H, W, 3]`` or ``[N, H, W, 3]`` float in [0, 1] (or
    uint8) and
    ``[D]`` / ``[1, D]`` (shared) or ``[N, D]`` embeddings (from
    :meth:`~arbitrary_nst.inference.Stylizer.embed` / ``mix``) -> float32 of the content's shape.
    """

    def __init__(self, model: ArbitraryStyleModel | str | os.PathLike | bytes, *,
                 threads: int | None = None, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a listed requirement
            raise ModelError("the ONNX path needs `pip install onnxruntime`") from None
        if isinstance(model, ArbitraryStyleModel):
            data = transfer_graph(model).SerializeToString()
        elif isinstance(model, (bytes, bytearray)):
            data, model = bytes(model), "the serialized graph"  # (the messages name it)
        else:
            p = Path(model)
            if p.is_dir():
                raise ModelError(f"{p}: is a folder, expected an .onnx file")
            if not p.is_file():
                raise ModelError(f"{p}: no such ONNX file")
            data = p.read_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                data, opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"{model}: not a loadable ONNX model "
                             f"({' '.join(str(e).split())[:200]})") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"content", "embedding"}:
            raise ModelError(f"{model}: not an arbitrary_nst transfer graph "
                             f"(inputs {sorted(inputs)})")
        self.embedding_dim = int(inputs["embedding"].shape[-1])

    def transfer(self, content: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        from .images import array_to_float
        from .inference import bucket_shape, pad_to

        x = np.asarray(content)
        single = x.ndim == 3
        if x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ConfigError(f"content must be [H, W, 3] or [N, H, W, 3], got {x.shape}")
        # read as the Stylizer reads arrays: uint8 /255, uint16 /65535, floats checked in [0, 1]
        x = np.stack([array_to_float(xi) for xi in (x[None] if single else x)])
        e = np.asarray(embedding, np.float32)
        if e.ndim not in (1, 2) or e.shape[-1] != self.embedding_dim:
            raise ConfigError(f"embedding must be [{self.embedding_dim}] or "
                              f"[N, {self.embedding_dim}], got shape {e.shape}")
        if not np.all(np.isfinite(e)):
            raise ConfigError("embedding has NaN or infinite values")
        e = e.reshape(-1, self.embedding_dim)
        if e.shape[0] == 1 and x.shape[0] > 1:
            e = np.repeat(e, x.shape[0], 0)
        if e.shape[0] != x.shape[0]:
            raise ConfigError(f"{e.shape[0]} embeddings for {x.shape[0]} content images")
        h, w = x.shape[1:3]
        # As Stylizer(buckets=None): a multiple of 4, >= 8. (Graphs exported since 2026-12 pad
        # to 4 themselves, but not below 8 px: a 9x9 reflect pad needs them; older ones not.)
        ph, pw = bucket_shape(h, w, None)
        if (ph, pw) != (h, w):
            x = np.stack([pad_to(xi, (ph, pw)) for xi in x])
        y = self.run_padded(x, e)[:, :h, :w]
        return y[0] if single else y

    def run_padded(self, x: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """The graph on a batch as the Stylizer prepares it, unchecked: float32 ``[N, H, W,
        3]`` in [0, 1] with H, W multiples of 4 (>= 8) and ``[N, D]`` float32 embeddings."""
        return self.session.run(["stylized"], {"content": x, "embedding": embeddings})[0]
