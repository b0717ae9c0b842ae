"""Smoke-test config: a few steps on 64x64 generated images (no files), tiny model, f32.

Used by the tests and by ``make``-style smoke runs:
``python train.py --config configs/smoke.py --workdir /tmp/smoke``. Fields as in
``configs/default.py``; only the sizes, step counts and cadences differ.
"""
from __future__ import annotations

from arbitrary_nst.training import base_config


def get_config():
    c = base_config("default.py", __file__)  # (next to this file, else the project's)
    c.name = "smoke"
    c.model.width = 0.25
    c.model.hidden_dim = 64
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.grad_clip_norm = 0.0
    c.train.num_steps = 8
    c.train.batch_size = 4
    c.train.dtype = "float32"
    c.train.log_every = 1
    c.train.checkpoint_every = 4
    c.train.keep_checkpoints = 2
    c.train.sample_every = 0
    c.train.sample_size = 64
    c.train.sample_contents = ("chelsea",)
    c.train.sample_styles = ("strokes", "mosaic")
    c.data.source = "synthetic"
    c.data.content_dirs = []
    c.data.style_dirs = []
    c.data.image_size = 64
    c.data.style_size = 64
    return c
