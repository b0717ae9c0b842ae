"""Export the transfer network (+ the predictor's CIN heads) to ONNX, and run it with onnxruntime.

Why: on a CPU, onnxruntime's convolution kernels (MLAS) run the network's small-channel convs
1.3-1.9x as fast as XLA:CPU's (``bench/infer.py`` has both rows), so for CPU deployment the
exported graph is the fast path. Training, the style predictor (VGG16 statistics + MLP, once per
style) and every GPU path stay in JAX.

The graph (opset 17, NCHW inside, NHWC at the edges like the rest of the package):

* inputs ``content`` ``[N, H, W, 3]`` float32 RGB in [0, 1] (any N, H, W >= 5: the graph
  reflect-pads H and W to multiples of 4 at the bottom/right, as the
  :class:`~arbitrary_nst.inference.Stylizer` does, and crops back; below 5 px (4 x 4 included)
  the 9x9 conv's reflect ``Pad`` fails inside onnxruntime, and :class:`OnnxTransfer` pads
  smaller images to 8 itself) and ``embedding`` ``[N, D]`` or ``[1, D]`` float32 (the style
  embedding: mixtures and the strength knob are computed on it before the call; N broadcasts
  between the two inputs, any other mismatch is an onnxruntime error);
* the 13 CIN heads (``embedding @ kernel + bias`` -> gamma, beta) are ``Gemm`` nodes, so one
  exported file covers every style (``transfer_graph(offset_input=True)``, the graph of the
  Stylizer's onnxruntime backend, adds an input ``offset`` ``[N, G]`` to gamma/beta: fitted
  styles; the exported file has the two inputs);
* convs are ``Pad(reflect)`` + ``Conv`` (VALID, no bias), instance norms are
  ``InstanceNormalization`` (eps 1e-5, biased variance: :func:`~arbitrary_nst.models.transfer.
  instance_norm`), CIN multiplies/adds the per-example gamma/beta, upsampling is ``Resize``
  nearest (``asymmetric``/``floor``: exact pixel repetition), then ``Sigmoid`` and a ``Slice``
  back to ``H x W``;
* output ``stylized`` ``[N, H, W, 3]`` float32 in [0, 1];
* metadata: ``arbitrary_nst.model_config`` (JSON of ``ArbitraryStyleModel.config()``),
  ``arbitrary_nst.model_fingerprint`` (:func:`~arbitrary_nst.fit_style.model_fingerprint`: the
  transfer network's and heads' weights, as fitted styles record it), ``producer_version`` (the
  package version) and a ``doc_string`` naming the inputs.

This module imports without JAX: :class:`OnnxTransfer` on an ``.onnx`` file (or its bytes) needs
numpy, Pillow and onnxruntime only; exporting (:func:`transfer_graph`) imports the model code.

``tests/test_onnx_export.py`` checks that onnxruntime on the exported graph equals the JAX
forward (max abs difference < 1e-4 on random and trained weights, odd sizes, batch 2).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import ConfigError, ImageError, ModelError, check_count, one_line, out_of_memory
from .files import write_atomically
from .padding import pad_to, round_side

if TYPE_CHECKING:  # (imported where used: OnnxTransfer on a file runs without JAX)
    from .models import ArbitraryStyleModel

OPSET = 17
#: Largest ``OnnxTransfer(threads=)``: 10**6 hung creating threads.
MAX_THREADS = 1024


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


def transfer_graph(model: "ArbitraryStyleModel", *, name: str = "arbitrary_nst_transfer",
                   offset_input: bool = False):
    """The ONNX ``ModelProto`` of ``model``'s CIN heads + transfer network (see module doc).

    ``offset_input``: a third input ``offset`` ``[N, G]`` (or ``[1, G]``) float32 added to the
    heads' gamma/beta (:func:`arbitrary_nst.fit_style.flatten`'s layout: per CIN layer gamma,
    then beta): fitted styles (the ``onnxruntime`` backend builds its graph so; the exported
    file keeps the two inputs)."""
    import onnx
    from onnx import TensorProto, helper

    from . import __version__
    from .fit_style import model_fingerprint
    from .models.transfer import CIN_LAYER_NAMES, EPS

    net, pred = model.transfer_net, model.predictor
    g = _GraphBuilder()
    d = pred.embedding_dim

    # Per-layer gamma/beta [N, C, 1, 1] from the embedding (the predictor's heads).
    axes_hw = g.const("axes_hw", np.array([2, 3], np.int64))
    # (only the fitted offsets' Slice uses it: an unused initializer made every plain
    # onnxruntime session of the exported file warn "Removing initializer ...")
    axis1 = g.const("axis1", np.array([1], np.int64)) if offset_input else ""
    gb: dict[str, tuple[str, str]] = {}
    start = 0  # (where this layer's gamma starts in the offset: fit_style.flatten's layout)
    for lname in CIN_LAYER_NAMES:
        head = pred.heads[lname]
        k, b, c = _np(head.kernel), _np(head.bias), head.channels
        out = []
        for part, sl in (("gamma", slice(0, c)), ("beta", slice(c, 2 * c))):
            y = g.op("Gemm", ["embedding", g.const(f"{lname}_{part}_w", k[:, sl]),
                              g.const(f"{lname}_{part}_b", b[sl])], f"{lname}_{part}")
            if offset_input:
                lo = start + sl.start
                off = g.op("Slice", ["offset", g.const("lo", np.array([lo], np.int64)),
                                     g.const("hi", np.array([lo + c], np.int64)), axis1])
                y = g.op("Add", [y, off], f"{lname}_{part}_fitted")
            out.append(g.op("Unsqueeze", [y, axes_hw], f"{lname}_{part}4d"))
        gb[lname] = (out[0], out[1])
        start += 2 * c

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
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", d])]
        + ([helper.make_tensor_value_info("offset", TensorProto.FLOAT, ["K", int(start)])]
           if offset_input else []),
        [helper.make_tensor_value_info("stylized", TensorProto.FLOAT, ["N", "H", "W", 3])],
        g.inits)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="arbitrary_nst",
        producer_version=__version__,
        doc_string=f"arbitrary_nst transfer network: content [N, H, W, 3] float32 RGB in [0, 1] "
                   f"(H, W >= 5) + embedding [N, {d}] or [1, {d}] float32 (Stylizer.embed of "
                   f"this model) -> stylized [N, H, W, 3] float32 in [0, 1]")
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime >= 1.14
    # JSON (C++/JS deployers parse it; it was repr(): Python only); the fingerprint tells a
    # graph of another model (whose embeddings do not fit) apart
    for key, value in (("model_config", json.dumps(model.config(), sort_keys=True)),
                       ("model_fingerprint", model_fingerprint(model))):
        meta = proto.metadata_props.add()
        meta.key, meta.value = f"arbitrary_nst.{key}", value
    onnx.checker.check_model(proto)
    return proto


def save_transfer_onnx(model: "ArbitraryStyleModel", path: str | os.PathLike, *,
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
    bytes. ``threads``: onnxruntime's intra-op threads (default: the CPUs this process may run
    on, ``os.sched_getaffinity``, else ``os.cpu_count()``).
    ``transfer(content, embedding)``: ``[H, W, 3]`` or ``[N, H, W, 3]`` float in [0, 1] (or
    uint8) and
    ``[D]`` / ``[1, D]`` (shared) or ``[N, D]`` embeddings (from
    :meth:`~arbitrary_nst.inference.Stylizer.embed` / ``mix``) -> float32 of the content's shape.
    ``offset_input=True`` (an in-memory model only): the graph also takes fitted styles'
    gamma/beta offsets (:func:`transfer_graph`), through :meth:`run_padded`.
    """

    def __init__(self, model: "ArbitraryStyleModel | str | os.PathLike | bytes", *,
                 threads: int | None = None, providers: list[str] | None = None,
                 offset_input: bool = False):
        # (as Stylizer.load checks it: 0 was all cores, -1 went to onnxruntime, 1.5 and True
        # were 1 thread, "2" was taken, 10**6 hung creating threads)
        threads = check_count(threads, "threads", 1, MAX_THREADS)
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a listed requirement
            raise ModelError("the ONNX path needs `pip install onnxruntime`") from None
        if isinstance(model, (bytes, bytearray)):
            data, model = bytes(model), "the serialized graph"  # (the messages name it)
        elif not isinstance(model, (str, os.PathLike)):
            from .models import ArbitraryStyleModel  # (JAX: only for an in-memory model)
            if not isinstance(model, ArbitraryStyleModel):
                raise ConfigError("OnnxTransfer takes an ArbitraryStyleModel, an .onnx file or "
                                  f"its bytes, got {type(model).__name__}")
            data = transfer_graph(model, offset_input=offset_input).SerializeToString()
        else:
            p = Path(model)
            if p.is_dir():
                raise ModelError(f"{p}: is a folder, expected an .onnx file")
            if not p.is_file():
                raise ModelError(f"{p}: no such ONNX file")
            data = p.read_bytes()
        # (an unknown provider printed onnxruntime's "EP Error" banner and ran on the CPU)
        unknown = [p for p in (providers or []) if (p[0] if isinstance(p, tuple) else p)
                   not in ort.get_available_providers()]
        if unknown:
            raise ConfigError(f"providers {unknown} are not available in this onnxruntime "
                              f"(available: {', '.join(ort.get_available_providers())})")
        opts = ort.SessionOptions()
        # (onnxruntime logged its own "[E:onnxruntime:...]" line before raising; the raised
        # error is what we report, in one line)
        opts.log_severity_level = 4
        opts.intra_op_num_threads = threads or default_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                data, opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            name = (model if isinstance(model, (str, os.PathLike))  # (not the model's repr:
                    else "the model's transfer graph")                # 148 kB of parameters)
            raise ModelError(f"{name}: not a loadable ONNX model "
                             f"({one_line(e)[:200]})") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) - {"offset"} != {"content", "embedding"}:
            raise ModelError(f"{model}: not an arbitrary_nst transfer graph "
                             f"(inputs {sorted(inputs)})")
        self.embedding_dim = int(inputs["embedding"].shape[-1])
        #: G, the size of the gamma/beta offsets the graph takes (None: it takes none)
        self.offset_dim = int(inputs["offset"].shape[-1]) if "offset" in inputs else None

    def transfer(self, content: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        from .images import array_to_float

        if isinstance(content, (str, bytes, os.PathLike)):
            raise ImageError(None, "content must be an image array, got a path: transfer() does "
                                   "not read files (load it with images.load_image)")
        try:
            x = np.asarray(content)
        except ValueError:  # numpy's "inhomogeneous shape"
            raise ConfigError("content images of different sizes in one batch: call transfer "
                              "once per size") from None
        if x.dtype == object:
            raise ConfigError("content must be an array of numbers ([H, W, 3] or [N, H, W, 3]), "
                              f"got {_describe(content)}")
        single = x.ndim == 3
        if x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise ConfigError(f"content must be [H, W, 3] or [N, H, W, 3], got {x.shape}")
        if x.ndim == 4 and x.shape[0] == 0:
            raise ConfigError("content is an empty batch (N = 0)")
        # read as the Stylizer reads arrays: uint8 /255, uint16 /65535, floats checked in [0, 1]
        x = np.stack([array_to_float(xi) for xi in (x[None] if single else x)])
        e = _embedding_array(embedding, self.embedding_dim)
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
        # to 4 themselves, but below 5 px the 9x9 conv's reflect pad fails in onnxruntime;
        # older graphs do not pad at all.)
        ph, pw = round_side(h), round_side(w)
        if (ph, pw) != (h, w):
            x = np.stack([pad_to(xi, (ph, pw)) for xi in x])
        try:
            y = self.run_padded(x, e)[:, :h, :w]
        except Exception as ex:  # noqa: BLE001 - only out of memory is mapped here
            if (oom := out_of_memory(ex)) is None:
                raise
            raise ConfigError(f"{oom}: transfer smaller images or fewer at a time") from None
        return y[0] if single else y

    def run_padded(self, x: np.ndarray, embeddings: np.ndarray,
                   offsets: np.ndarray | None = None) -> np.ndarray:
        """The graph on a batch as the Stylizer prepares it, unchecked: float32 ``[N, H, W,
        3]`` in [0, 1] with H, W multiples of 4 (>= 8), ``[N, D]`` float32 embeddings and, for
        a graph with the offset input, ``[N, G]`` float32 offsets (None: zeros)."""
        feed = {"content": x, "embedding": embeddings}
        if self.offset_dim is not None:
            feed["offset"] = (np.zeros((len(embeddings), self.offset_dim), np.float32)
                              if offsets is None else offsets)
        elif offsets is not None:
            raise ConfigError("this graph takes no gamma/beta offsets (fitted styles): export it "
                              "with transfer_graph(model, offset_input=True)")
        try:
            return self.session.run(["stylized"], feed)[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            if out_of_memory(e) is not None:
                raise  # (the callers say what to lower, as for XLA's)
            raise ModelError(f"onnxruntime failed on a {' x '.join(map(str, np.shape(x)))} "
                             f"batch ({one_line(e)[:200]})") from None


#: Where the cgroup hierarchies are mounted, and the file naming this process's cgroup in each:
#: v2 (one hierarchy, the ``0::PATH`` line; ``cpu.max`` holds ``"max 100000"`` or ``"<quota>
#: <period>"``) and v1 (the ``cpu`` controller's line; ``cpu/cpu.cfs_quota_us`` and
#: ``cpu/cpu.cfs_period_us``).
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"


def default_threads() -> int:
    """onnxruntime's default intra-op threads: the CPUs this process may run on (``taskset``,
    container cpusets), else ``os.cpu_count()``, at most the container's CPU quota (``docker
    --cpus 2`` leaves every host CPU visible). (Under ``taskset -c 0``, 2 threads on a 2-core
    machine were ~1.7x slower than 1; on 2 cores 16 threads were 7.8x slower than 2.)"""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # (not on macOS / Windows)
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return n if quota is None else max(1, min(n, quota))


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per controller from ``/proc/self/cgroup`` (``""``: the v2
    hierarchy); empty when unreadable."""
    own: dict[str, str] = {}
    try:
        with open(PROC_SELF_CGROUP) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    for controller in parts[1].split(","):
                        own.setdefault(controller, parts[2])
    except (OSError, ValueError):
        pass
    return own


def _cgroup_dirs(base: str, path: str) -> list[str]:
    """``base/path`` and each folder above it up to ``base`` (a quota on any of them holds):
    ``("/r", "/a/b")`` -> ``["/r/a/b", "/r/a", "/r"]``. A path that does not exist under
    ``base`` (a container's v1 mount shows only its own cgroup, named by its host path) is
    tried and skipped by the reader. A path with ``..`` (a cgroup outside this namespace's
    root) names no folder under ``base``: only ``base`` (dropping the ``..`` read a sibling)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return [base]
    return [os.path.join(base, *parts[:k]) for k in range(len(parts), -1, -1)]


def _quota_pair(folder: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """``(quota, period)`` as written in ``folder``: the first two words of one file (v2's
    ``cpu.max``) or the contents of two (v1's); None when unreadable or short."""
    try:
        texts = []
        for name in names:
            with open(os.path.join(folder, name)) as f:
                texts.append(f.read())
    except (OSError, ValueError):
        return None
    words = texts[0].split()[:2] if len(texts) == 1 else [t.strip() for t in texts]
    return (words[0], words[1]) if len(words) == 2 else None


def _quota_cpus(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # ("max": no quota)
        return None
    return -(-q // p) if q > 0 and p > 0 else None


def cgroup_cpu_quota() -> int | None:
    """The CPUs a cgroup CPU quota allows (rounded up), or None without one (or unreadable):
    the smallest quota of this process's cgroup and the cgroups above it (``systemd-run -p
    CPUQuota=200%`` sets it on a nested cgroup; a container sees its own as the root). cgroup
    v2 when any of its ``cpu.max`` files reads as two words, else v1."""
    own = _own_cgroups()
    pairs = [q for d in _cgroup_dirs(CGROUP_ROOT, own.get("", "/"))
             if (q := _quota_pair(d, ("cpu.max",))) is not None]
    if not pairs:
        pairs = [q for d in _cgroup_dirs(os.path.join(CGROUP_ROOT, "cpu"), own.get("cpu", "/"))
                 if (q := _quota_pair(d, ("cpu.cfs_quota_us", "cpu.cfs_period_us"))) is not None]
    cpus = [c for q in pairs if (c := _quota_cpus(*q)) is not None]
    return min(cpus) if cpus else None


def _describe(x: Any) -> str:
    r = repr(x)
    return type(x).__name__ + (f" {r}" if len(r) <= 40 else "")


def _embedding_array(embedding: Any, dim: int) -> np.ndarray:
    """``embedding`` as a real-valued float32 array (shape checked by the caller); one-line
    ConfigErrors for strings, paths, None and complex values (a complex embedding lost its
    imaginary part with only a ComplexWarning; a string was numpy's raw ValueError)."""
    want = f"embedding must be an array of real numbers ([{dim}] or [N, {dim}])"
    if isinstance(embedding, (str, bytes, os.PathLike)):
        raise ConfigError(f"{want}, got a {type(embedding).__name__} (files are not read: "
                          "Stylizer.embed(style) computes one)")
    try:
        e = np.asarray(embedding)
    except ValueError:
        raise ConfigError(f"{want}, got rows of different lengths") from None
    if e.dtype.kind not in "iuf":
        raise ConfigError(f"{want}, got {_describe(embedding) if e.dtype == object else e.dtype}")
    return e.astype(np.float32)
