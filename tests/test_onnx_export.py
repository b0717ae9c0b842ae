"""The ONNX export of the transfer network and the Stylizer's ``onnxruntime`` backend.

Reference: the JAX forward of the same model. onnxruntime must agree to 1e-4 (measured ~1e-6)
on random models whose CIN heads are random (so every gamma/beta depends on the embedding), on
odd sizes (padding + crop), batches and shared embeddings, and through every Stylizer option.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arbitrary_nst import cli, cli_stylize, images, inference
from arbitrary_nst.errors import ConfigError, ModelError
from arbitrary_nst.inference import Stylizer
from arbitrary_nst.onnx_export import OnnxTransfer, save_transfer_onnx, transfer_graph

from test_cli_stylize import make_model_file, png

ATOL = 1e-4


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, vgg):
    return make_model_file(tmp_path_factory.mktemp("onnx") / "model.safetensors", vgg, seed=3)


@pytest.fixture(scope="module")
def stylizers(model_file, vgg):
    return (Stylizer.load(model_file, vgg=vgg, buckets=None),
            Stylizer.load(model_file, vgg=vgg, buckets=None, backend="onnxruntime", threads=1))


def test_graph_matches_jax_forward(stylizers, rng):
    jax_st, _ = stylizers
    m = jax_st.model
    ot = OnnxTransfer(m, threads=1)
    # Multiple of 4: the raw network (no padding) on both sides.
    x = rng.random((2, 48, 64, 3)).astype(np.float32)
    e = rng.normal(size=(2, m.embedding_dim)).astype(np.float32)
    y = ot.transfer(x, e)
    ref = np.asarray(m.transfer(x, e))
    assert y.shape == (2, 48, 64, 3)
    np.testing.assert_allclose(y, ref, atol=ATOL)
    assert np.abs(y[0] - y[1]).max() > 1e-2  # the embedding (and the content) matter
    # One embedding shared by a batch, single HWC image.
    np.testing.assert_allclose(ot.transfer(x, e[:1])[1], np.asarray(m.transfer(x[1:], e[:1]))[0],
                               atol=ATOL)
    np.testing.assert_allclose(ot.transfer(x[0], e[0]), ref[0], atol=ATOL)
    u8 = (x[0] * 255).round().astype(np.uint8)  # uint8 means 0..255
    np.testing.assert_allclose(ot.transfer(u8, e[0]), ot.transfer(u8 / np.float32(255), e[0]),
                               atol=1e-6)


def test_odd_sizes_are_padded_and_cropped_like_the_stylizer(stylizers, rng):
    jax_st, _ = stylizers
    m = jax_st.model
    ot = OnnxTransfer(m, threads=1)
    x = rng.random((37, 45, 3)).astype(np.float32)
    e = rng.normal(size=(m.embedding_dim,)).astype(np.float32)
    padded, (h, w) = images.pad_to_multiple(x, 4)
    ref = np.asarray(m.transfer(padded[None], e[None]))[0, :h, :w]
    y = ot.transfer(x, e)
    assert y.shape == (37, 45, 3)
    np.testing.assert_allclose(y, ref, atol=ATOL)


def test_the_exported_file_alone_pads_odd_sizes_like_the_stylizer(stylizers, rng, tmp_path):
    """onnxruntime on the file alone (what a deployment runs, README "for onnxruntime
    alone"): sizes that are not multiples of 4 differed from the Stylizer in a 12-20 px band
    along the bottom/right edge (up to 0.19); the graph now reflect-pads them itself."""
    import onnxruntime as ort

    m = stylizers[0].model
    path = save_transfer_onnx(m, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    e = rng.normal(size=(2, m.embedding_dim)).astype(np.float32)
    for h, w in ((85, 128), (37, 45), (8, 9), (48, 64)):
        x = rng.random((2, h, w, 3)).astype(np.float32)
        padded = np.stack([inference.pad_to(xi, inference.bucket_shape(h, w, None)) for xi in x])
        ref = np.asarray(m.transfer(padded, e))[:, :h, :w]
        y = sess.run(["stylized"], {"content": x, "embedding": e})[0]
        assert y.shape == (2, h, w, 3)
        np.testing.assert_allclose(y, ref, atol=ATOL)


def test_inputs_are_read_and_checked_as_the_stylizer_reads_them(stylizers, rng):
    """Tiny images (the graph's 9x9 reflect pad needs 8 px: onnxruntime raised) are padded as
    Stylizer(buckets=None) pads them; uint16 is 0..65535 (it was taken as floats up to 65535);
    out-of-range floats and wrong embeddings are one-line errors."""
    from arbitrary_nst.errors import ConfigError, ImageError
    m = stylizers[0].model
    ot = OnnxTransfer(m, threads=1)
    e = rng.normal(size=(m.embedding_dim,)).astype(np.float32)
    for h, w in ((2, 2), (4, 4), (1, 9), (5, 7)):
        x = rng.random((h, w, 3)).astype(np.float32)
        padded = inference.pad_to(x, inference.bucket_shape(h, w, None))
        ref = np.asarray(m.transfer(padded[None], e[None]))[0, :h, :w]
        # (a 1-px row repeated to 8 is nearly flat: instance norm amplifies rounding there)
        np.testing.assert_allclose(ot.transfer(x, e), ref, atol=1e-3)
    x16 = (rng.random((12, 16, 3)) * 65535).astype(np.uint16)
    np.testing.assert_allclose(ot.transfer(x16, e), ot.transfer(x16 / np.float32(65535), e),
                               atol=1e-6)
    with pytest.raises(ImageError, match="must be in \\[0, 1\\]"):
        ot.transfer(x16.astype(np.float32), e)
    with pytest.raises(ConfigError, match="embedding must be"):
        ot.transfer(x16, e[:-1])
    with pytest.raises(ConfigError, match="embedding has NaN or infinite values"):
        ot.transfer(x16, np.full_like(e, np.nan))  # (it named the shape, which was right)


def test_trained_builtin_model_exports_exactly(vgg, rng):
    st = Stylizer.load(vgg=vgg)
    ot = OnnxTransfer(st.model, threads=1)
    x = rng.random((1, 64, 64, 3)).astype(np.float32)
    e = st.embed(rng.random((64, 64, 3)).astype(np.float32), style_size=64)
    np.testing.assert_allclose(ot.transfer(x, e), np.asarray(st.model.transfer(x, e)), atol=ATOL)


@pytest.mark.parametrize("kw", [dict(), dict(strength=0.4), dict(preserve_color=True),
                                dict(preserve_color="match", strength=0.7),
                                dict(weights=[0.25, 0.75]), dict(palette=0.6),
                                dict(palette=1.0, strength=0.5, weights=[1, 2]),
                                dict(palette=0.8, preserve_color="match")])
def test_stylizer_backends_agree_on_every_option(stylizers, rng, kw):
    jax_st, ort_st = stylizers
    content = (rng.random((41, 30, 3)) * 255).astype(np.uint8)
    styles = [rng.random((40, 40, 3)).astype(np.float32),
              rng.random((36, 44, 3)).astype(np.float32)]
    style = styles if ("weights" in kw or kw.get("preserve_color") == "match") else styles[0]
    a = jax_st.stylize(content, style=style, style_size=32, **kw)
    b = ort_st.stylize(content, style=style, style_size=32, **kw)
    assert a.shape == b.shape == (41, 30, 3)
    np.testing.assert_allclose(b, a, atol=ATOL)


def test_onnxruntime_backend_compiles_nothing_per_image_size(stylizers, rng):
    """The palette (which the built-in model has on) and the luminance step ran as jitted JAX
    on onnxruntime's outputs, compiled once per image size: 16 programs and 12 s of an 18-photo
    folder job that took 3 s without them. Warm, new sizes compile nothing now."""
    import jax.monitoring

    _, ort_st = stylizers
    style = rng.random((40, 40, 3)).astype(np.float32)
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for kw in (dict(palette=0.6), dict(preserve_color=True),
                   dict(palette=0.5, strength=0.5), dict(palette=0.8, preserve_color="match")):
            ort_st.stylize(rng.random((20, 28, 3)).astype(np.float32), style=style,
                           style_size=32, **kw)  # (warm: the style's embedding, the 3x3 step)
            compiles.clear()
            for h, w in ((37, 29), (44, 52), (61, 33)):
                ort_st.stylize((rng.random((h, w, 3)) * 255).astype(np.uint8), style=style,
                               style_size=32, **kw)
            assert compiles == [], (kw, len(compiles))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_stylizer_transfer_batch_and_files(stylizers, rng, tmp_path):
    jax_st, ort_st = stylizers
    c = (rng.random((33, 47, 3)) * 255).astype(np.uint8)
    e = rng.normal(size=(3, jax_st.embedding_dim)).astype(np.float32)
    np.testing.assert_allclose(ort_st.transfer(c, e), jax_st.transfer(c, e), atol=ATOL)
    for i in range(3):
        Image.fromarray((rng.random((30 + i, 40, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"c{i}.png")
    s = png(tmp_path / "s.png", 40, 40, 1)
    outs = {}
    for st in stylizers:
        d = tmp_path / st.backend
        d.mkdir()
        res = list(st.stylize_files(sorted(tmp_path.glob("c*.png")), style=s, style_size=32,
                                    output=lambda p, d=d: d / p.name, batch_size=2))
        assert all(r.ok for r in res) and len(res) == 3
        outs[st.backend] = [np.asarray(Image.open(p), np.int16) for p in sorted(d.glob("*.png"))]
    for a, b in zip(outs["jax"], outs["onnxruntime"]):
        assert np.abs(a - b).max() <= 1  # uint8 rounding of ~1e-6 differences


def test_auto_backend_is_onnxruntime_on_a_cpu_and_jax_for_bfloat16(model_file, vgg, stylizers,
                                                                  tmp_path):
    """backend="auto" (the CLI's default) is the onnxruntime backend on CPU devices in float32
    (1.3-1.9x as fast there) and JAX for a bfloat16 model."""
    _, ort_st = stylizers
    auto = Stylizer.load(model_file, vgg=vgg, buckets=None, backend="auto", threads=1)
    assert auto.backend == "onnxruntime" and auto._onnx is not None
    c = png(tmp_path / "c.png", 37, 45, 2)
    s = png(tmp_path / "s.png", 40, 40, 3)
    np.testing.assert_array_equal(auto.stylize(c, style=s, style_size=32),
                                  ort_st.stylize(c, style=s, style_size=32))
    assert Stylizer.load(model_file, vgg=vgg, backend="auto", dtype="bfloat16").backend == "jax"


@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_fitted_styles_run_on_onnxruntime_as_on_jax(stylizers, tmp_path, strength):
    """The onnxruntime backend's graph takes the fitted styles' gamma/beta offsets (a third
    input; they were refused, and under "auto" ran on JAX, which compiles per shape): alone,
    mixed with an image, at a strength below 1 (the offset scaled, the content's own is 0),
    through transfer(offsets=) and the file pipeline."""
    from test_cli_stylize import SS, _fitted_style_file

    jax_st, ort_st = stylizers
    c = png(tmp_path / "c.png", 37, 45, 2)
    s = png(tmp_path / "s.png", 40, 40, 3)
    fitted = str(_fitted_style_file(jax_st, s, tmp_path / "f.npz"))
    plain = ort_st.stylize(c, style=s, style_size=int(SS), strength=strength)
    for style in ([fitted], [fitted, s]):  # a fitted style alone, mixed with an image
        a = jax_st.stylize(c, style=style, style_size=int(SS), strength=strength)
        b = ort_st.stylize(c, style=style, style_size=int(SS), strength=strength)
        np.testing.assert_allclose(b, a, atol=ATOL)
        assert np.abs(b - plain).max() > 1e-2  # (the offset took effect)
    e, m, d = jax_st.style_parts([fitted], style_size=int(SS))
    np.testing.assert_allclose(ort_st.transfer(c, e, palette_moments=m, offsets=d),
                               jax_st.transfer(c, e, palette_moments=m, offsets=d), atol=ATOL)
    outs = {}
    for st in stylizers:
        res = list(st.stylize_files([c], style=[fitted], style_size=int(SS), strength=strength,
                                    output=lambda p, b=st.backend: tmp_path / f"{b}.png"))
        assert res[0].ok, res[0]
        outs[st.backend] = np.asarray(Image.open(tmp_path / f"{st.backend}.png"), np.int16)
    assert np.abs(outs["jax"] - outs["onnxruntime"]).max() <= 1


def test_graph_offset_input_adds_to_the_heads_gamma_beta(stylizers, rng):
    """transfer_graph(offset_input=True) = the JAX network on heads(embedding) + offset, in
    fit_style.flatten's layout; zeros give the plain graph; a graph without the input refuses
    offsets in one line."""
    from arbitrary_nst import fit_style

    m = stylizers[0].model
    with_offset = OnnxTransfer(m, threads=1, offset_input=True)
    plain = OnnxTransfer(m, threads=1)
    g = with_offset.offset_dim
    assert g == fit_style.predicted_conditioning(m, np.zeros((1, m.embedding_dim))).shape[-1]
    assert plain.offset_dim is None
    x = rng.random((2, 24, 32, 3)).astype(np.float32)
    e = rng.normal(size=(2, m.embedding_dim)).astype(np.float32)
    d = rng.normal(0, 0.5, size=(2, g)).astype(np.float32)
    np.testing.assert_allclose(with_offset.run_padded(x, e, d),
                               np.asarray(fit_style.transfer_with(m, x, e, d)), atol=ATOL)
    np.testing.assert_allclose(with_offset.run_padded(x, e), plain.run_padded(x, e), atol=1e-6)
    np.testing.assert_allclose(with_offset.run_padded(x, e, d[:1]),  # ([1, G]: for the batch;
                               with_offset.run_padded(x, e, d[[0, 0]]), atol=1e-6)  # N was shared)
    with pytest.raises(ConfigError, match="takes no gamma/beta offsets"):
        plain.run_padded(x, e, d)


def test_resolve_backend_picks_onnxruntime_only_where_it_is_faster_and_installed(monkeypatch):
    import builtins
    import warnings
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")
    assert inference.resolve_backend("auto", cpu) == "onnxruntime"
    assert inference.resolve_backend("jax", cpu) == "jax"
    assert inference.resolve_backend("onnxruntime", cpu) == "onnxruntime"
    assert inference.resolve_backend("auto", [*cpu, SimpleNamespace(platform="gpu")]) == "jax"
    bf16 = SimpleNamespace(transfer_net=SimpleNamespace(dtype=jnp.bfloat16))
    f32 = SimpleNamespace(transfer_net=SimpleNamespace(dtype=jnp.float32))
    assert inference.resolve_backend("auto", cpu, bf16) == "jax"
    assert inference.resolve_backend("auto", cpu, f32) == "onnxruntime"
    real_import = builtins.__import__
    for missing in ("onnx", "onnxruntime"):  # (not installed: JAX, nothing to say)
        def absent(name, *a, m=missing, **k):
            if name == m:
                raise ModuleNotFoundError(f"No module named {m!r}")
            return real_import(name, *a, **k)

        monkeypatch.setattr(builtins, "__import__", absent)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert inference.resolve_backend("auto", cpu) == "jax"
        monkeypatch.setattr(builtins, "__import__", real_import)


def test_unknown_backend_is_a_config_error(model_file, vgg):
    with pytest.raises(ConfigError, match="backend"):
        Stylizer.load(model_file, vgg=vgg, backend="tensorrt")


def test_save_is_atomic_and_checked(stylizers, tmp_path, rng):
    m = stylizers[0].model
    path = save_transfer_onnx(m, tmp_path / "t.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]  # no temp file left
    ot = OnnxTransfer(path, threads=1)
    assert ot.embedding_dim == m.embedding_dim
    x = rng.random((1, 32, 32, 3)).astype(np.float32)
    e = rng.normal(size=(1, m.embedding_dim)).astype(np.float32)
    np.testing.assert_allclose(ot.transfer(x, e), np.asarray(m.transfer(x, e)), atol=ATOL)
    proto = transfer_graph(m)
    assert [i.name for i in proto.graph.input] == ["content", "embedding"]
    with pytest.raises(ConfigError, match="end in .onnx"):
        save_transfer_onnx(m, tmp_path / "t.bin")
    assert save_transfer_onnx(m, tmp_path / "T.ONNX").is_file()  # (the CLI let it pass first)
    with pytest.raises(ConfigError, match="does not exist"):
        save_transfer_onnx(m, tmp_path / "nowhere" / "t.onnx")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        save_transfer_onnx(m, tmp_path / "a_file" / "t.onnx")


def test_an_interrupted_onnx_export_leaves_no_temporary_file(stylizers, tmp_path, monkeypatch):
    """Ctrl-C during the write used to leave .t.onnx.tmp-PID (only OSError cleaned up)."""
    from arbitrary_nst import files

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_transfer_onnx(stylizers[0].model, tmp_path / "t.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_onnx_files_are_one_line_model_errors(stylizers, tmp_path, rng):
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(ModelError, match="no such ONNX file"):
        OnnxTransfer(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="is a folder, expected an .onnx file"):
        OnnxTransfer(tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="not a loadable ONNX model") as ei:
        OnnxTransfer(bad)
    assert "\n" not in str(ei.value)
    # A valid ONNX file that is not one of ours.
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), other)
    with pytest.raises(ModelError, match="not an arbitrary_nst transfer graph"):
        OnnxTransfer(other)
    ot = stylizers[1]._onnx
    with pytest.raises(ConfigError, match="3 embeddings for 2 content images"):
        ot.transfer(rng.random((2, 32, 32, 3)).astype(np.float32),
                    np.zeros((3, ot.embedding_dim), np.float32))


# --------------------------------------------------------------------------------- the CLI


def test_cli_backend_option_writes_the_same_image(model_file, vgg, tmp_path, capsys):
    cli_stylize._VGG["vgg"] = vgg
    c = png(tmp_path / "c.png", 37, 45, 2)
    s = png(tmp_path / "s.png", 40, 40, 3)
    outs = []
    for backend in ("jax", "onnxruntime", None):  # None: the default, "auto"
        out = tmp_path / f"{backend}.png"
        rc = cli_stylize.main(["--content", str(c), "--style", str(s), "--out", str(out),
                               "--model", str(model_file), "--style-size", "32",
                               *(["--backend", backend] if backend else [])])
        assert rc == 0, capsys.readouterr().err
        outs.append(np.asarray(Image.open(out), np.int16))
    assert np.abs(outs[0] - outs[1]).max() <= 1
    np.testing.assert_array_equal(outs[2], outs[1])  # on this CPU "auto" is onnxruntime
    rc = cli_stylize.main(["--content", str(c), "--style", str(s), "--out", str(tmp_path / "x.png"),
                           "--model", str(model_file), "--backend", "onnxruntime",
                           "--dtype", "bfloat16"])
    err = capsys.readouterr().err
    assert rc != 0 and err.strip().startswith("error: ") and "float32" in err
    assert len(err.strip().splitlines()) == 1


def test_export_onnx_command(model_file, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli.main(["export-onnx", "--model", str(model_file), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "wrote" in stdout and "max abs difference" in stdout and out.is_file()
    assert "palette" not in stdout  # (this model has none)
    before = out.read_bytes()
    assert cli.main(["export-onnx", "--model", str(model_file), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and out.read_bytes() == before
    assert cli.main(["export-onnx", "--model", str(tmp_path / "nope.safetensors"),
                     "--out", str(tmp_path / "n.onnx")]) == 1
    assert "no such model file" in capsys.readouterr().err


def test_exported_file_is_readable_by_older_onnxruntime_and_names_its_config(stylizers):
    m = stylizers[0].model
    proto = transfer_graph(m)
    assert proto.ir_version <= 8  # onnxruntime >= 1.14 reads it
    assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(meta) == {"arbitrary_nst.model_config", "arbitrary_nst.model_fingerprint"}
    # every initializer is used: an unused one ("axis1", needed by fitted offsets only) made
    # every plain onnxruntime session of the exported file warn "Removing initializer ..."
    for offset_input in (False, True):
        g = transfer_graph(m, offset_input=offset_input).graph
        used = {name for node in g.node for name in node.input}
        assert [i.name for i in g.initializer if i.name not in used] == [], offset_input


def test_threads_and_input_checks(stylizers, tmp_path, rng):
    import onnx
    from onnx import TensorProto, helper

    m = stylizers[0].model
    for n in (1, 3):
        ot = OnnxTransfer(m, threads=n)
        assert ot.session.get_session_options().intra_op_num_threads == n
    e = np.zeros(ot.embedding_dim, np.float32)
    for shape in ((8, 8, 4), (8, 8), (1, 1, 8, 8, 3)):
        with pytest.raises(ConfigError) as ei:
            ot.transfer(np.zeros(shape, np.float32), e)
        assert str(ei.value) == f"content must be [H, W, 3] or [N, H, W, 3], got {shape}"
    # a graph with an "embedding" input but another image input is not ours
    f = TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("Identity", ["image"], ["stylized"]),
                           helper.make_node("Identity", ["embedding"], ["e"])], "other",
                          [helper.make_tensor_value_info("image", f, [1]),
                           helper.make_tensor_value_info("embedding", f, [1, 4])],
                          [helper.make_tensor_value_info("stylized", f, [1]),
                           helper.make_tensor_value_info("e", f, [1, 4])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), other)
    with pytest.raises(ModelError) as ei:
        OnnxTransfer(other)
    assert str(ei.value) == (f"{other}: not an arbitrary_nst transfer graph "
                             "(inputs ['embedding', 'image'])")


def test_export_onnx_says_the_palette_is_not_in_the_graph(tmp_path, capsys):
    """The built-in model's palette (0.5) is applied after the graph: a deployer running the
    file alone got muted colours without a word from the command."""
    out = tmp_path / "b.onnx"
    assert cli.main(["export-onnx", "--out", str(out), "--no-check"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("wrote ") and out.is_file()
    assert "note: the model's palette (0.5) is not in the graph" in stdout


# ------------------------------------------------------------------------------------------------
# Mutation-testing pass: the export's self-check


def test_export_onnx_check_refuses_a_graph_that_differs_from_jax(stylizers, tmp_path,
                                                                   monkeypatch, capsys):
    """The check after export-onnx is what stands between a wrong graph and a deployment: an
    onnxruntime output 2e-4 off the JAX forward, or NaN (which no `diff > limit` refuses), is
    one error line, not "wrote ..." and exit status 0. (Both sides stubbed: the JAX side is
    0.5 on the 61 x 70 image and 1.0 on the padding the check must crop away.)"""
    import types

    from arbitrary_nst import onnx_export

    class Model:  # the real model (exported), with a cheap, known forward
        def __getattr__(self, k):
            return getattr(stylizers[0].model, k)

        def transfer(self, x, e):
            assert x.shape == (1, 64, 72, 3)  # (padded as the Stylizer pads 61 x 70)
            y = np.ones(x.shape, np.float32)
            y[:, :61, :70] = 0.5
            return y

    st = types.SimpleNamespace(model=Model(), embedding_dim=stylizers[0].embedding_dim)
    monkeypatch.setattr(Stylizer, "load", lambda *a, **k: st)
    for name, value, ok in (("same", 0.5, True), ("off", 0.5 + 2e-4, False),
                            ("nan", np.nan, False)):
        def fake(path, value=value):
            run = lambda names, feeds: [np.full(feeds["content"].shape, value, np.float32)]  # noqa: E731
            return types.SimpleNamespace(session=types.SimpleNamespace(run=run))

        monkeypatch.setattr(onnx_export, "OnnxTransfer", fake)
        out = tmp_path / f"{name}.onnx"
        rc = cli.main(["export-onnx", "--model", "m.safetensors", "--out", str(out)])
        cap = capsys.readouterr()
        if ok:
            assert rc == 0 and "onnxruntime vs JAX max abs difference 0.0e+00" in cap.out, cap
            assert out.is_file()
        else:
            assert rc == 1 and "wrote" not in cap.out, (name, cap)
            assert cap.err.startswith("error: ") and "onnxruntime differs from JAX by" in cap.err
            assert cap.err.count("\n") == 1
            # nothing left behind: no file that failed its check, no temporary file
            assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["same.onnx"]
    # with --overwrite a graph that fails the check leaves the earlier (good) file as it was
    # (the same bytes would be written: the file's inode tells a replacement)
    before = (tmp_path / "same.onnx").stat().st_ino
    rc = cli.main(["export-onnx", "--model", "m.safetensors", "--out", str(tmp_path / "same.onnx"),
                   "--overwrite"])
    assert rc == 1 and (tmp_path / "same.onnx").stat().st_ino == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.onnx"]


def test_embeddings_of_another_rank_are_one_line_errors(stylizers):
    """Only [D], [1, D] and [N, D] embeddings: a scalar was an IndexError traceback, and a
    [N, 1, D] or [2, 2, D] array was flattened into some order of styles without a word."""
    m = stylizers[0].model
    ot = OnnxTransfer(m, threads=1)
    x = np.zeros((2, 8, 8, 3), np.float32)
    d = ot.embedding_dim
    for shape in ((), (2, 1, d), (1, 2, d)):
        with pytest.raises(ConfigError) as e:
            ot.transfer(x, np.zeros(shape, np.float32))
        assert str(e.value) == f"embedding must be [{d}] or [N, {d}], got shape {shape}"


# ------------------------------------------------------------------------------------------------
# Deployment hunt of the ONNX export


@pytest.fixture(scope="module")
def onnx_file(stylizers, tmp_path_factory):
    return save_transfer_onnx(stylizers[0].model, tmp_path_factory.mktemp("onnx_file") / "m.onnx")


def test_an_unknown_provider_is_refused_not_replaced_by_the_cpu(onnx_file):
    """``providers=["Nope"]`` printed onnxruntime's "EP Error" banner and ran on the CPU."""
    with pytest.raises(ConfigError, match=r"providers \['Nope'\] are not available in this "
                                          r"onnxruntime \(available: .*CPUExecutionProvider"):
        OnnxTransfer(onnx_file, providers=["Nope"])
    assert OnnxTransfer(onnx_file, providers=["CPUExecutionProvider"]).embedding_dim > 0
    assert OnnxTransfer(onnx_file, providers=[("CPUExecutionProvider", {})]).embedding_dim > 0


def test_threads_are_checked_and_default_to_the_usable_cpus(onnx_file, monkeypatch):
    """As Stylizer.load(threads=) checks them: 0 was all cores, -1 went to onnxruntime, 1.5 and
    True were 1, "2" was taken, 10**6 hung creating threads. The default counted all cores
    (os.cpu_count) even under taskset / a container cpuset: 2 threads on 1 usable core were
    ~1.7x slower than 1."""
    from arbitrary_nst import onnx_export

    for bad in (0, -1, 1.5, True, "2", 10**6):
        with pytest.raises(ConfigError) as ei:
            OnnxTransfer(onnx_file, threads=bad)
        assert str(ei.value) == f"threads must be an integer in [1, 1024], got {bad!r}"
    monkeypatch.setattr(onnx_export.os, "cpu_count", lambda: 6)
    monkeypatch.setattr(onnx_export.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert onnx_export.default_threads() == 1
    assert OnnxTransfer(onnx_file).session.get_session_options().intra_op_num_threads == 1
    monkeypatch.delattr(onnx_export.os, "sched_getaffinity", raising=False)  # (macOS, Windows)
    assert onnx_export.default_threads() == 6


def test_metadata_is_json_with_the_fingerprint_and_version(stylizers, onnx_file):
    """model_config was repr(): json.loads failed for C++/JS deployers; nothing told a graph of
    another model apart, and producer_version / doc_string were empty."""
    import json

    import onnx

    import arbitrary_nst
    from arbitrary_nst import fit_style

    m = stylizers[0].model
    proto = onnx.load(str(onnx_file))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["arbitrary_nst.model_config"]) == m.config()
    assert meta["arbitrary_nst.model_fingerprint"] == fit_style.model_fingerprint(m)
    assert proto.producer_name == "arbitrary_nst"
    assert proto.producer_version == arbitrary_nst.__version__
    assert "[0, 1]" in proto.doc_string and "H, W >= 5" in proto.doc_string
    assert f"[N, {m.embedding_dim}]" in proto.doc_string


def test_bad_transfer_inputs_are_one_line_errors(stylizers, onnx_file):
    """Each was numpy's or onnxruntime's own error (or a warning): images of different sizes
    ("inhomogeneous shape"), an empty batch ("need at least one array to stack"), a string or
    path embedding ("could not convert string to float"), OnnxTransfer(None) (TypeError), a
    complex embedding (its imaginary part dropped with a ComplexWarning), a content path ("got
    ()")."""
    import warnings

    from arbitrary_nst.errors import ImageError

    ot = stylizers[1]._onnx
    d = ot.embedding_dim
    e = np.zeros(d, np.float32)
    z = np.zeros((16, 16, 3), np.float32)

    def error(cls, f, match):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(cls, match=match) as ei:
                f()
        assert "\n" not in str(ei.value)

    error(ConfigError, lambda: ot.transfer([z, np.zeros((8, 8, 3), np.float32)], e),
          "different sizes in one batch")
    error(ConfigError, lambda: ot.transfer(np.zeros((0, 16, 16, 3), np.float32), e),
          r"empty batch \(N = 0\)")
    error(ImageError, lambda: ot.transfer("photo.jpg", e), "load it with images.load_image")
    error(ImageError, lambda: ot.transfer(Path("photo.jpg"), e), "does not read files")
    for bad in ("abc", Path("style.npz")):
        error(ConfigError, lambda: ot.transfer(z, bad), "files are not read: Stylizer.embed")
    error(ConfigError, lambda: ot.transfer(z, None), "array of real numbers")
    error(ConfigError, lambda: ot.transfer(z, e + 1j), "array of real numbers.*complex")
    error(ConfigError, lambda: ot.transfer(z, [e, e[:-1]]), "rows of different lengths")
    error(ConfigError, lambda: OnnxTransfer(None), "OnnxTransfer takes .*got NoneType")
    assert ot.transfer([z, z], np.zeros(d, np.int64)).shape == (2, 16, 16, 3)  # lists, ints: fine


def test_onnx_transfer_works_without_jax(stylizers, onnx_file, tmp_path, rng):
    """A deployment server without JAX/Flax could not import arbitrary_nst.onnx_export (it
    imported the model code, and transfer() the JAX inference module for its padding)."""
    import subprocess
    import sys

    ot = stylizers[1]._onnx
    x = rng.random((13, 17, 3)).astype(np.float32)  # (padded by OnnxTransfer)
    e = rng.normal(size=(ot.embedding_dim,)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "e.npy", e)
    code = ("import sys; sys.modules['jax'] = sys.modules['flax'] = None\n"
            "import numpy as np\n"
            "from arbitrary_nst.onnx_export import OnnxTransfer\n"
            f"d = {str(tmp_path)!r}\n"
            f"ot = OnnxTransfer({str(onnx_file)!r}, threads=1)\n"
            "np.save(d + '/y.npy', ot.transfer(np.load(d + '/x.npy'), np.load(d + '/e.npy')))\n"
            "assert not any(m.startswith(('jax', 'flax')) for m in sys.modules\n"
            "               if sys.modules[m] is not None)\n")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ot.transfer(x, e), atol=1e-6)


def test_the_raw_graph_takes_5_px_and_broadcasts_one_embedding(stylizers, onnx_file, rng):
    """What the README and the graph's doc_string say of the file alone: H, W >= 5 (it said 8;
    4 x 4 fails in onnxruntime's reflect Pad), and an [1, D] embedding serves a batch."""
    import onnxruntime as ort

    from arbitrary_nst import onnx_export

    m = stylizers[0].model
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    e = rng.normal(size=(1, m.embedding_dim)).astype(np.float32)
    for h, w in ((5, 5), (5, 9), (7, 6)):
        x = rng.random((2, h, w, 3)).astype(np.float32)
        padded = np.stack([inference.pad_to(xi, ((h + 3) // 4 * 4, (w + 3) // 4 * 4))
                           for xi in x])
        ref = np.asarray(m.transfer(padded, np.repeat(e, 2, 0)))[:, :h, :w]
        y = sess.run(["stylized"], {"content": x, "embedding": e})[0]
        np.testing.assert_allclose(y, ref, atol=1e-3)
    with pytest.raises(Exception, match="Pad"):
        sess.run(["stylized"], {"content": rng.random((1, 4, 4, 3)).astype(np.float32),
                                "embedding": e})
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "H and W at least 5" in readme and "H and W at least 8" not in readme
    assert "H, W >= 5" in onnx_export.__doc__


def test_export_onnx_messages_for_an_onnx_model_and_an_unwritable_folder(onnx_file, tmp_path,
                                                                         capsys):
    """`export-onnx --model m.onnx` suggested "--backend onnxruntime", which export-onnx has
    not; `--out /proc/m.onnx` said the folder "is not writable: No such file or directory"."""
    rc = cli.main(["export-onnx", "--model", str(onnx_file), "--out", str(tmp_path / "n.onnx")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "already an ONNX export; --model takes the model export (.safetensors)" in err
    assert "with --backend onnxruntime" not in err and not (tmp_path / "n.onnx").exists()
    rc = cli.main(["export-onnx", "--out", "/proc/m.onnx", "--no-check"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: /proc: cannot create files in this output folder")


# ------------------------------------------- onnxruntime failing under the CLI's default (auto)


def _ort_error(kind: str, text: str):
    import onnxruntime.capi.onnxruntime_pybind11_state as st

    return getattr(st, kind)(text)


ORT_OOM = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv "
           "node. Failed to allocate memory for requested buffer of size 768000000")


def test_allocation_failures_of_every_backend_are_out_of_memory():
    from arbitrary_nst.errors import out_of_memory

    assert out_of_memory(_ort_error("Fail", ORT_OOM)).startswith("out of memory ([ONNX")
    assert out_of_memory(MemoryError()) == "out of memory (MemoryError)"
    assert out_of_memory(RuntimeError("std::bad_alloc")) is not None
    assert out_of_memory(_ort_error("InvalidArgument", "Got invalid dimensions")) is None
    # a file error whose path holds a marker is a file error
    assert out_of_memory(PermissionError(13, "Permission denied", "/runs/std::bad_alloc")) is None
    # onnxruntime's says it after a long source path: the message keeps the reason
    long = _ort_error("Fail", "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned "
                      "while running Conv node. Name:'contract_conv1_226_nchwc' Status Message: "
                      "/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:359 "
                      "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool) Failed to "
                      "allocate memory for requested buffer of size 768000000")
    assert "Failed to allocate memory" in out_of_memory(long)


@pytest.mark.parametrize("kind", ["oom", "other"])
def test_onnxruntime_failures_in_a_run_are_one_line(stylizers, model_file, vgg, tmp_path,
                                                    monkeypatch, capsys, kind):
    """On the CLI's default backend an onnxruntime failure inside a run (out of memory on a
    12 MP photo under a memory limit, or anything else it raises) was a 35-line traceback after
    onnxruntime's own "[E:onnxruntime...]" log line; JAX's out of memory was one line."""
    import onnxruntime as ort

    _, ort_st = stylizers
    err = (_ort_error("Fail", ORT_OOM) if kind == "oom" else
           _ort_error("RuntimeException", "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : boom"))

    def boom(self, *a, **k):
        raise err

    monkeypatch.setattr(ort.InferenceSession, "run", boom)
    c = png(tmp_path / "c.png", 37, 45, 2)
    s = png(tmp_path / "s.png", 40, 40, 3)
    want = "out of memory ([ONNXRuntimeError]" if kind == "oom" else "onnxruntime failed on a 1 x"
    with pytest.raises(ConfigError if kind == "oom" else ModelError, match=re.escape(want)):
        ort_st.stylize(c, style=s, style_size=32)  # (the API: one line)
    assert ort_st._onnx.session.get_session_options().log_severity_level == 4
    cli_stylize._VGG["vgg"] = vgg
    monkeypatch.setattr(cli_stylize, "_STYLIZERS", {})
    rc = cli.main(["--content", str(c), "--style", str(s), "--out", str(tmp_path / "o.png"),
                   "--model", str(model_file)])  # (infer.py's entry point)
    out = capsys.readouterr().err
    assert rc == 1 and len(out.strip().splitlines()) == 1, out
    assert out.startswith("error: " + want) and not (tmp_path / "o.png").exists(), out
    if kind == "oom":
        assert out.rstrip().endswith("use smaller values of --max-size, --batch-size"), out
    else:
        assert "--backend jax" in out
    raw = OnnxTransfer(ort_st.model, threads=1)  # (the JAX-free API: one line too)
    with pytest.raises(ConfigError if kind == "oom" else ModelError) as ei:
        raw.transfer(np.zeros((8, 8, 3), np.float32), np.zeros(raw.embedding_dim, np.float32))
    assert str(ei.value).startswith("out of memory" if kind == "oom" else "onnxruntime failed")
    assert "--backend" not in str(ei.value)


def test_auto_runs_on_jax_where_onnxruntime_cannot_load_or_import(model_file, vgg, monkeypatch,
                                                                   tmp_path, capsys):
    """"auto" only picks the faster backend: a session onnxruntime cannot create (an IR version
    it does not know) or an onnxruntime that fails to import (built for another numpy) made
    the CLI's default command fail although JAX works, with a 148 kB message (the model's
    repr) for the first; an explicit "onnxruntime" still fails, in one short line."""
    import builtins

    import jax
    import onnxruntime as ort

    def bad_session(*a, **k):
        raise _ort_error("Fail", "[ONNXRuntimeError] : 1 : FAIL : Unsupported model IR version")

    monkeypatch.setattr(ort, "InferenceSession", bad_session)
    with pytest.warns(UserWarning, match="onnxruntime cannot run this model .*running on JAX"):
        st = Stylizer.load(model_file, vgg=vgg, backend="auto")
    assert st.backend == "jax" and st._onnx is None
    c = png(tmp_path / "c.png", 37, 45, 2)
    assert st.stylize(c, style=c, style_size=32).shape == (37, 45, 3)
    cli_stylize._VGG["vgg"] = vgg  # the CLI: the warning in one line, then the image
    monkeypatch.setattr(cli_stylize, "_STYLIZERS", {})
    rc = cli.main(["--content", str(c), "--style", str(c), "--out", str(tmp_path / "o.png"),
                   "--model", str(model_file), "--style-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and (tmp_path / "o.png").is_file(), err
    assert len(err) == 1 and err[0].startswith("warning: onnxruntime cannot run this model"), err
    with pytest.raises(ModelError) as ei:
        Stylizer.load(model_file, vgg=vgg, backend="onnxruntime")
    assert str(ei.value).startswith("the model's transfer graph: not a loadable ONNX model")
    assert len(str(ei.value)) < 300
    monkeypatch.undo()
    real_import = builtins.__import__

    def broken(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("A module that was compiled using NumPy 1.x cannot be run in "
                              "NumPy 2.x")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.warns(UserWarning, match="onnxruntime does not import .*NumPy 2.x.*running on JAX"):
        assert inference.resolve_backend("auto", jax.devices("cpu")) == "jax"


def _fake_cgroups(monkeypatch, root, own="0::/\n"):
    """cgroup files under ``root`` (the mount point) and ``root/self`` (/proc/self/cgroup,
    holding ``own``): the top cgroup's v2 cpu.max and v1 quota and period files."""
    from arbitrary_nst import onnx_export

    (root / "cpu").mkdir(exist_ok=True)
    (root / "self").write_text(own)
    monkeypatch.setattr(onnx_export, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(onnx_export, "PROC_SELF_CGROUP", str(root / "self"))
    return root / "cpu.max", root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"


def test_default_threads_keep_to_a_containers_cpu_quota(monkeypatch, tmp_path):
    """`docker --cpus 2` leaves every host CPU visible to sched_getaffinity; onnxruntime then
    ran one thread per host CPU (on 2 cores 16 threads were 7.8x slower than 2)."""
    from arbitrary_nst import onnx_export

    monkeypatch.setattr(onnx_export.os, "sched_getaffinity", lambda pid: set(range(16)),
                        raising=False)
    v2, q, p = _fake_cgroups(monkeypatch, tmp_path)
    assert onnx_export.cgroup_cpu_quota() is None and onnx_export.default_threads() == 16
    for text, want in (("150000 100000\n", 2), ("200000 100000", 2), ("max 100000", None),
                       ("50000 100000", 1), ("3200000 100000", 32)):
        v2.write_text(text)
        assert onnx_export.cgroup_cpu_quota() == want, text
        assert onnx_export.default_threads() == min(16, want or 16), text
    v2.unlink()
    q.write_text("300000\n")
    p.write_text("100000\n")
    assert onnx_export.cgroup_cpu_quota() == 3 and onnx_export.default_threads() == 3
    q.write_text("-1\n")  # (v1: no quota)
    assert onnx_export.cgroup_cpu_quota() is None


def test_out_of_memory_knows_msvcs_bad_alloc_and_cuts_at_the_first_marker():
    """MSVC's std::bad_alloc says "bad allocation"; a message holding two markers is cut (or
    not) at the first one: XLA's RESOURCE_EXHAUSTED at the start keeps the message's start."""
    from arbitrary_nst.errors import out_of_memory

    assert out_of_memory(RuntimeError("bad allocation")) == "out of memory (bad allocation)"
    text = ("RESOURCE_EXHAUSTED: " + "x" * 200
            + " Failed to allocate memory for requested buffer of size 768000000")
    assert out_of_memory(RuntimeError(text)) == f"out of memory ({text[:160]})"


def test_resolve_backend_returns_other_names_as_they_are(model_file, vgg):
    """Only "auto" is resolved: an explicit backend (or an unknown name, refused later) is
    returned whatever the devices and the model's dtype."""
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp

    gpu = [SimpleNamespace(platform="gpu")]
    bf16 = SimpleNamespace(transfer_net=SimpleNamespace(dtype=jnp.bfloat16))
    assert inference.resolve_backend("onnxruntime", gpu) == "onnxruntime"
    assert inference.resolve_backend("onnxruntime", jax.devices("cpu"), bf16) == "onnxruntime"
    assert inference.resolve_backend("tensorrt", jax.devices("cpu")) == "tensorrt"
    # (an array equal to "jax" elementwise is not a backend name: one line, not a ValueError)
    with pytest.raises(ConfigError, match="backend must be one of"):
        Stylizer.load(model_file, vgg=vgg, backend=np.array(["jax", "onnxruntime"]))


def test_stylizer_threads_reach_the_onnxruntime_session(model_file, vgg):
    st = Stylizer.load(model_file, vgg=vgg, backend="onnxruntime", threads=3)
    assert st._onnx.session.get_session_options().intra_op_num_threads == 3


def test_a_fitted_style_on_a_batch_of_different_sizes_on_onnxruntime(model_file, vgg,
                                                                     stylizers, tmp_path):
    """A bucket's batch of images of different sizes runs as one onnxruntime call per size:
    each call takes its own images' offsets (all of the batch's were an error)."""
    from test_cli_stylize import SS, _fitted_style_file

    jax_st = stylizers[0]
    ort_st = Stylizer.load(model_file, vgg=vgg, backend="onnxruntime", threads=1)  # (buckets)
    assert inference.bucket_shape(37, 45) == inference.bucket_shape(34, 42)  # (one batch)
    c1 = png(tmp_path / "c1.png", 37, 45, 2)
    c2 = png(tmp_path / "c2.png", 34, 42, 4)
    s = png(tmp_path / "s.png", 40, 40, 3)
    fitted = str(_fitted_style_file(jax_st, s, tmp_path / "f.npz"))
    both = ort_st.stylize([c1, c2], style=[fitted], style_size=int(SS), batch_size=2)
    for c, y in zip((c1, c2), both):
        np.testing.assert_array_equal(y, ort_st.stylize(c, style=[fitted], style_size=int(SS)))


def test_a_graph_with_an_input_besides_offset_is_not_ours(tmp_path):
    """Only "offset" may join content and embedding (another input was fed nothing: an
    onnxruntime error at the first image instead of a one-line refusal at load)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
              (("content", ["N", "H", "W", 3]), ("embedding", ["N", 4]), ("mask", ["N", 4]))]
    g = helper.make_graph([helper.make_node("Identity", ["content"], ["stylized"])], "extra",
                          inputs, [helper.make_tensor_value_info("stylized", TensorProto.FLOAT,
                                                                 ["N", "H", "W", 3])])
    extra = tmp_path / "extra.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), extra)
    with pytest.raises(ModelError, match=r"not an arbitrary_nst transfer graph \(inputs "
                                         r"\['content', 'embedding', 'mask'\]\)"):
        OnnxTransfer(extra)


def test_a_cgroup_v2_file_of_one_word_falls_back_to_v1(monkeypatch, tmp_path):
    """A cpu.max that does not split in two (empty, truncated) is unreadable: the v1 files are
    read instead, and without them there is no quota (a ValueError traceback otherwise)."""
    from arbitrary_nst import onnx_export

    v2, q, p = _fake_cgroups(monkeypatch, tmp_path)
    for text in ("", "150000\n", "100000 -100000", "-100000 -100000"):  # (negative: invalid)
        v2.write_text(text)
        assert onnx_export.cgroup_cpu_quota() is None, text
    q.write_text("250000\n")
    p.write_text("100000\n")
    v2.write_text("150000\n")
    assert onnx_export.cgroup_cpu_quota() == 3


def test_cli_warnings_are_one_line_and_showwarning_is_restored(monkeypatch, capsys):
    """The CLI prints a warning as one "warning: ..." line (Python's are two, the second the
    source line), to the file it is given, and gives warnings.showwarning back after main()."""
    import io
    import warnings

    def warn_and_stop(run, args):
        warnings.warn("onnxruntime cannot run this model (line one\n  line two); running on JAX")
        return 0

    monkeypatch.setattr(cli, "run_removing_new_empty_dirs", warn_and_stop)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        before = warnings.showwarning
        assert cli.main(["--content", "c.png", "--style", "s.png", "--out", "o.png"]) == 0
        assert warnings.showwarning is before
    assert capsys.readouterr().err == ("warning: onnxruntime cannot run this model (line one "
                                       "line two); running on JAX\n")
    buf = io.StringIO()
    cli._show_warning(UserWarning("a\nb"), UserWarning, "x.py", 1, file=buf)
    assert buf.getvalue() == "warning: a b\n" and capsys.readouterr().err == ""


def test_onnxruntime_messages_are_flattened_cut_and_say_what_to_lower(onnx_file, tmp_path,
                                                                      monkeypatch):
    """The one-line messages keep what matters: a run failure's reason (flattened, cut at 200
    characters), the out-of-memory hint of OnnxTransfer.transfer, the .onnx file's name in a
    load failure, a broken import's reason (flattened, cut at 160) in the "auto" warning."""
    import builtins
    import warnings

    import jax
    import onnxruntime as ort

    from arbitrary_nst.errors import out_of_memory

    assert (out_of_memory(RuntimeError("RESOURCE_EXHAUSTED:\n  Out of memory\twhile x"))
            == "out of memory (RESOURCE_EXHAUSTED: Out of memory while x)")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelError, match=re.escape(f"{bad}: not a loadable ONNX model")):
        OnnxTransfer(bad)
    raw = OnnxTransfer(onnx_file, threads=1)
    x, e = np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, raw.embedding_dim), np.float32)
    reason = "RUNTIME_EXCEPTION :\n  boom " + "y" * 300

    def fail(self, *a, **k):
        raise _ort_error("RuntimeException", reason)

    monkeypatch.setattr(ort.InferenceSession, "run", fail)
    with pytest.raises(ModelError) as ei:
        raw.run_padded(x, e)
    assert str(ei.value) == (f"onnxruntime failed on a 1 x 8 x 8 x 3 batch "
                             f"({' '.join(reason.split())[:200]})")

    def oom(self, *a, **k):
        raise _ort_error("Fail", ORT_OOM)

    monkeypatch.setattr(ort.InferenceSession, "run", oom)
    with pytest.raises(ConfigError) as ei:
        raw.transfer(x[0], e[0])
    assert str(ei.value).endswith(": transfer smaller images or fewer at a time")
    monkeypatch.undo()
    real_import = builtins.__import__

    def broken(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("numpy.core.multiarray failed to import\n  " + "z" * 300)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inference.resolve_backend("auto", jax.devices("cpu")) == "jax"
    text = str(caught[0].message)
    assert "\n" not in text and "failed to import z" in text and len(text) < 220, text


def test_a_cpu_quota_on_a_nested_cgroup_is_seen(monkeypatch, tmp_path):
    """``systemd-run -p CPUQuota=200%`` (or a container sharing the host's cgroup tree) puts
    the quota on the process's own cgroup below the mount point: only the top one was read,
    so onnxruntime ran a thread per CPU again. The smallest quota on the way up holds; a
    path that is not under the mount (a container's v1 view) and an unreadable
    /proc/self/cgroup leave the top one."""
    from arbitrary_nst import onnx_export

    v2, q, p = _fake_cgroups(monkeypatch, tmp_path, "0::/system.slice/run-1.scope\n")
    scope = tmp_path / "system.slice" / "run-1.scope"
    scope.mkdir(parents=True)
    (scope / "cpu.max").write_text("200000 100000\n")
    (scope.parent / "cpu.max").write_text("max 100000\n")
    v2.write_text("max 100000\n")
    assert onnx_export.cgroup_cpu_quota() == 2
    (scope.parent / "cpu.max").write_text("100000 100000\n")  # (a smaller one above it)
    assert onnx_export.cgroup_cpu_quota() == 1
    (scope.parent / "cpu.max").unlink()
    v2.unlink()  # (the root cgroup of a host has no cpu.max)
    assert onnx_export.cgroup_cpu_quota() == 2
    (tmp_path / "self").write_text("0::/../elsewhere\n")  # (never outside the mount)
    assert onnx_export.cgroup_cpu_quota() is None
    # cgroup v1: the cpu controller's line (joined with cpuacct), its path not in the mount
    (scope / "cpu.max").unlink()
    (tmp_path / "self").write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
    q.write_text("300000\n")
    p.write_text("100000\n")
    assert onnx_export.cgroup_cpu_quota() == 3
    nested = tmp_path / "cpu" / "docker" / "abc"
    nested.mkdir(parents=True)
    (nested / "cpu.cfs_quota_us").write_text("150000\n")
    (nested / "cpu.cfs_period_us").write_text("100000\n")
    assert onnx_export.cgroup_cpu_quota() == 2
    (tmp_path / "self").unlink()
    assert onnx_export.cgroup_cpu_quota() == 3


def test_refined_stylization_agrees_on_both_backends(stylizers, rng):
    """``refine_steps`` optimizes the embedding on JAX whatever the backend, then transfers on
    it (evaluate's model_refine runs there under --backend auto)."""
    jax_st, ort_st = stylizers
    content = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
    style = rng.random((40, 40, 3)).astype(np.float32)
    a = jax_st.stylize(content, style=style, style_size=32, refine_steps=2)
    b = ort_st.stylize(content, style=style, style_size=32, refine_steps=2)
    assert not np.allclose(a, jax_st.stylize(content, style=style, style_size=32), atol=1e-3)
    np.testing.assert_allclose(b, a, atol=ATOL)


def test_cgroup_quota_paths_odd_names_and_which_version_is_read(monkeypatch, tmp_path):
    """The process's cgroup path is everything after the second ':' (a ':' in a cgroup name
    is allowed); a cgroup whose cpu.max is absent (cpu not enabled for it) still has the
    quotas above it; '..' (a cgroup outside a namespace's root) never reads a folder outside
    the mount; an undecodable /proc/self/cgroup is as unreadable (no traceback); once cgroup
    v2 answers (even "max"), v1's files are not read."""
    from arbitrary_nst import onnx_export

    root = tmp_path / "mnt"
    root.mkdir()
    v2, q, p = _fake_cgroups(monkeypatch, root, "0::/a:b/c:d\n")
    v2.write_text("max 100000\n")
    (root / "a:b" / "c:d").mkdir(parents=True)
    (root / "a:b" / "c:d" / "cpu.max").write_text("300000 100000\n")
    assert onnx_export.cgroup_cpu_quota() == 3
    (root / "self").write_text("0::/a:b/c:d/leaf\n")  # (no cpu.max of its own)
    (root / "a:b" / "c:d" / "leaf").mkdir()
    assert onnx_export.cgroup_cpu_quota() == 3
    (root / "a:b" / "c:d" / "cpu.max").unlink()
    (root / "a:b" / "cpu.max").write_text("150000 100000\n")
    assert onnx_export.cgroup_cpu_quota() == 2
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "cpu.max").write_text("100000 100000\n")
    (root / "self").write_text("0::/../elsewhere\n")
    v2.write_text("400000 100000\n")
    assert onnx_export.cgroup_cpu_quota() == 4
    (root / "sib").mkdir()  # (not "/sib" with the ".." dropped: a sibling's quota)
    (root / "sib" / "cpu.max").write_text("100000 100000\n")
    (root / "self").write_text("0::/../sib\n")
    assert onnx_export.cgroup_cpu_quota() == 4
    (root / "self").write_bytes(b"0::/a:b\xff\n")
    assert onnx_export.cgroup_cpu_quota() == 4
    # v2 says "no quota": the v1 files (a hybrid host's) are not read
    (root / "self").write_text("4:cpu,cpuacct:/x:y\n0::/\n")
    v2.write_text("max 100000\n")
    q.write_text("200000\n")
    p.write_text("100000\n")
    assert onnx_export.cgroup_cpu_quota() is None
    v2.unlink()
    assert onnx_export.cgroup_cpu_quota() == 2
    (root / "cpu" / "x:y").mkdir()
    (root / "cpu" / "x:y" / "cpu.cfs_quota_us").write_text("100000\n")
    (root / "cpu" / "x:y" / "cpu.cfs_period_us").write_text("100000\n")
    assert onnx_export.cgroup_cpu_quota() == 1
