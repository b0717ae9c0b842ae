"""Fine-tune the built-in model on your own paintings (its architecture and last training recipe).

``python train.py --config configs/builtin.py --workdir workdirs/mine \
    --set "data.style_dirs=['my_paintings']" --set train.num_steps=600``

``configs/cpu_small.py`` plus what the shipped model (v11, README) differs in:

* model.embedding_dim 164, model.hidden_dim 384: v8-v11 are v7 (100-d embedding, 256 hidden
  units) with a distilled gamma/beta correction folded in as 64 extra embedding dimensions
  (``python -m arbitrary_nst.distill --target conditioning``); model.palette 0.5.
* The recipe of the CPU stages (RESULTS.md, session 7): styles as at inference (the whole
  painting at 256 px), style weight 0.5, batch 8, Adam 2e-4 with a cosine decay, 128x128 content
  crops. v11 is v10 trained on by this config on an H200 with 256x256 content crops
  (``data.image_size=256``, ``data.content_scale_range=(1.0, 1.15)``), batch 16, bfloat16 and
  100 warmup steps, for the 6971 steps that fit 470 s (``bench/device_train.sh``, run A).
* train.init_from = "builtin": start from the shipped weights.

``tests/test_training.py`` checks that this model section equals the shipped export's.
"""
from __future__ import annotations

from arbitrary_nst.training import base_config


def get_config():
    c = base_config("cpu_small.py", __file__)  # (next to this file, else the project's)
    c.name = "builtin"
    c.model.embedding_dim = 164
    c.model.hidden_dim = 384
    c.model.palette = 0.5
    c.loss.style_weight = 0.5
    c.data.style_size = 256
    c.data.style_resize_range = (256, 257)
    c.data.augment_strength = 0.5
    c.train.batch_size = 8
    c.train.num_steps = 600
    c.train.init_from = "builtin"
    c.optim.learning_rate = 2e-4
    return c
