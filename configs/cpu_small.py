"""Small CPU config: train the shipped model on a 2-core CPU in about 45-50 minutes.

``python train.py --config configs/cpu_small.py --workdir workdirs/cpu_small``

Fields as in ``configs/default.py``. What differs from Magenta / the GPU default and why:

* model.width 0.5 (Magenta's mobile model uses 0.25): the VGG16 loss network dominates the
  step (~90% of its FLOPs at 128^2), so width 0.5 costs little over 0.25 and learns faster;
  model.hidden_dim 256 keeps the exported file small (4.3 MB float32, 1.08M parameters).
* 128x128 content and style crops (Magenta 256), batch 4 (Magenta 8): 153 GFLOP per step,
  ~0.9 steps/s on this 2-core CPU (``bench/results/train_cpu.json``, 2026-12-06: the step alone
  0.92, the training loop 0.91), so 2500 steps take ~46 minutes.
* Adam at 2e-3 (Magenta 1e-5 from pretrained Inception; we start from scratch) with 100 warmup
  steps and a cosine decay to 2e-4. Measured at 64^2 over 600 steps: with Magenta's
  average-pooling loss VGG (model.vgg_pooling='avg', inherited from default.py) the loss falls
  steadily and the outputs take on each style's colours; with max pooling the relu3_3 Gram term
  swamps everything and the outputs stay style-independent blobs.
* loss.style_weight 0.25 (Magenta 1.0, i.e. the per-layer 0.5e-3 become 1.25e-4): with
  Magenta's balance the weighted style term is ~14x the content term at this budget and the
  outputs are style-independent textures with faint content after 600 steps; a quarter of it
  lets content and each style's palette show up within the hour. Raise it for longer runs.
* Crops at the 256-px scale (data.content_scale_range (2.0, 2.3), data.style_resize_range
  (258, 456), Magenta's 256 range): photos are resized to a smaller side of 256-294 and paintings
  to 258-456 before the 128x128 crop, so the network learns strokes at the scale it is used at
  (256-px styles, photos of a few hundred pixels) for the compute of 128x128 training. Measured
  (RESULTS.md, run ft4): on the eval paintings at 256 px, fine-tuning the 128-scale model this
  way lowered the Gram style loss 5%, the relu5_1 distance 9% and the colour-histogram distance
  11%, and removed most of its blocky ~8 px texture; at 128 px our model was 2.2x the peer's
  style loss but 7x at 256 px before it.
* Checkpoints and sample grids every 250 steps, logging every 25.
"""
from __future__ import annotations

from arbitrary_nst.training import base_config


def get_config():
    c = base_config("default.py", __file__)  # (next to this file, else the project's)
    c.name = "cpu_small"
    c.model.width = 0.5
    c.model.hidden_dim = 256
    c.loss.style_weight = 0.25
    c.optim.learning_rate = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.optim.end_learning_rate_factor = 0.1
    c.train.num_steps = 2500
    c.train.batch_size = 4
    c.train.dtype = "float32"
    c.train.log_every = 25
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 3
    c.train.sample_every = 250
    c.train.sample_size = 128
    c.data.image_size = 128
    c.data.style_size = 128
    c.data.content_scale_range = (2.0, 2.3)
    c.data.style_resize_range = (258, 456)
    return c
