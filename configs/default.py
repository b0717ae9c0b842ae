"""Default training config: one GPU, 256x256 content and style crops, batch 8 (Magenta's setup).

``python train.py --config configs/default.py --workdir DIR [--set train.num_steps=100000]``

Every field, with Magenta's ``arbitrary_image_stylization_train.py`` value for comparison:

seed                          model init, base RNG key and data order (Magenta: unseeded).
vgg_path                      VGG16 weights file (None: ``arbitrary_nst.weights`` resolution).
name                          free-form name stored in exports.

model.width                   transfer-net width multiplier (Magenta ``alpha``: 1.0; the mobile
                              distillation uses 0.25).
model.embedding_dim           style embedding size (Magenta ``style_prediction_bottleneck``: 100).
model.hidden_dim              hidden layer of the predictor MLP on the 1920 VGG statistics
                              (Magenta: none -- Inception-v3 Mixed_6e mean -> 1x1 conv -> 100).
model.style_taps              VGG taps whose per-channel mean/std feed the predictor (Magenta:
                              Inception-v3 ``Mixed_6e``, pretrained and fine-tuned).
model.feature_norm            'layer': standardize the 1920 log-statistics per example before
                              the MLP (Magenta: none; its Inception features are pretrained).
model.palette                 move outputs this far (0..1) to the style image's colour mean and
                              covariance, in training and at inference (``arbitrary_nst.models``:
                              palette; Magenta: none). 0: off.
model.vgg_pooling             pooling of the frozen VGG16 used by the loss and the predictor:
                              'avg' as Magenta's loss network (``vgg_16(pooling='avg')``); with
                              'max' the deep Gram terms are larger (relu3_3 11x, relu4_3 96x:
                              ``bench/vgg_loss_scales.py``) and swamp the content term under the
                              same weights.

loss.*                        ``arbitrary_nst.losses.LossConfig`` fields. Magenta:
                              content ``{"vgg_16/conv3": 1}`` (= relu3_3 here), style
                              ``{"vgg_16/conv1..conv4": 0.5e-3}`` (= relu1_2, relu2_2, relu3_3,
                              relu4_3), ``total_variation_weight`` 1e4; Gram / (H W); MSE means;
                              Magenta's slim VGG takes RGB 0..255 minus the mean, the same scale
                              as our caffe input, so the weights carry over unchanged.

optim.optimizer               'adam' (Magenta) or 'sgd' (plain/momentum SGD, for numerical tests).
optim.learning_rate           Adam peak LR (Magenta: 1e-5, because its predictor starts from
                              pretrained Inception weights and it trains for 8M steps; from
                              scratch 1e-3 is the usual choice, e.g. Johnson et al.).
optim.schedule                'constant' | 'cosine' | 'linear' after warmup (Magenta: constant).
optim.warmup_steps            linear warmup from 0 (Magenta: none).
optim.end_learning_rate_factor  final LR / peak LR for cosine/linear decay.
optim.b1, b2, eps             Adam moments (Magenta: TF defaults 0.9, 0.999, 1e-8).
optim.momentum                SGD momentum (0: none); unused by Adam.
optim.predictor_lr_multiplier scale of the style predictor's updates relative to the transfer
                              network's (1: same; Magenta: same). See
                              ``training._scale_predictor_updates`` for why > 1 can help.
optim.embedding_lr_multiplier further scale of the predictor's style -> embedding MLP
                              (not its gamma/beta heads) on top of the above (1: none).
optim.transfer_lr_multiplier  scale of the transfer network's updates (1: none; 0: frozen, e.g.
                              to adapt only the predictor to new conditions).
optim.grad_clip_norm          clip the global gradient norm (0 = off; Magenta: 0). The loss is
                              O(1e4..1e5) at the start, so clipping only catches spikes.

train.num_steps               total steps (Magenta: 8,000,000).
train.init_from               start from these weights instead of random init (fine-tuning):
                              'builtin' (the shipped model), an export (.safetensors) or a
                              workdir; the model config must match. A checkpoint in the workdir
                              takes precedence (resume). Optimizer state and step start fresh.
train.batch_size              global batch, split over all devices (Magenta: 8).
train.dtype                   'float32' | 'bfloat16' | 'auto' compute dtype of the transfer
                              net and the VGG forwards; params, norms and losses stay f32.
train.time_budget_s           wall-clock budget of the run in seconds (0: off). After
                              train.plan_after_steps steps the measured rate fixes num_steps
                              (at most the configured value) and the LR schedule is rebuilt for
                              it; see ``training._plan_time_budget``. For lent GPU time.
train.plan_after_steps        steps measured before the plan (keep <= optim.warmup_steps).
train.log_every               host sync + TensorBoard scalars + progress postfix every N steps.
train.checkpoint_every        Orbax checkpoint every N steps (also at the end and on
                              SIGINT/SIGTERM). Magenta: every 15 s.
train.keep_checkpoints        keep the last K checkpoints.
train.async_checkpoints       write checkpoints in a background thread.
train.sample_every            PNG grid (sample_contents x sample_styles) every N steps (0: off).
train.sample_size             side of the grid's images.
train.sample_contents / sample_styles   names from ``arbitrary_nst.samples`` (built in: never
                              reads the training or evaluation data).
train.export_dtype            dtype of the exported inference weights ('float32' | 'float16').

data.*                        ``arbitrary_nst.data.default_data_config()`` fields (see there):
                              source, content_dirs, style_dirs, image_size (Magenta 256),
                              style_size (Magenta 256), augmentation (Magenta's colour jitter,
                              flips and random resize+crop of styles).

distributed.initialize        call ``jax.distributed.initialize`` (multi-host); the other
                              fields (coordinator_address, num_processes, process_id) are passed
                              through when set, else auto-detected (SLURM, TPU, ...).
"""
from __future__ import annotations

import os
from pathlib import Path

import ml_collections

from arbitrary_nst.data import default_data_config

#: Training images (see /work/shared/data/README.md); override with $ARBITRARY_NST_DATA (set but
#: empty is unset, as $ARBITRARY_NST_CACHE: it was the current folder).
DATA_ROOT = Path(os.environ.get("ARBITRARY_NST_DATA", "").strip()
                 or Path(__file__).resolve().parents[2] / "shared" / "data")


def data_dirs() -> tuple[list[str], list[str]]:
    content = [str(DATA_ROOT / "content" / d) for d in ("bsds500", "imagenet_samples",
                                                         "coco2014_sample")]
    style = [str(DATA_ROOT / "style" / d) for d in ("peopleart_wikiart", "chinese_painting",
                                                     "bob_ross", "nst_examples")]
    style.append(str(DATA_ROOT / "texture" / "dtd10"))
    return content, style


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "default"
    c.seed = 0
    c.vgg_path = None

    c.model = ml_collections.ConfigDict(dict(
        width=1.0, embedding_dim=100, hidden_dim=512,
        style_taps=("relu1_2", "relu2_2", "relu3_3", "relu4_3"), feature_norm="layer",
        vgg_pooling="avg", palette=0.0))

    c.loss = ml_collections.ConfigDict(dict(
        content_layers={"relu3_3": 1.0},
        style_layers={"relu1_2": 0.5e-3, "relu2_2": 0.5e-3, "relu3_3": 0.5e-3,
                      "relu4_3": 0.5e-3},
        content_weight=1.0, style_weight=1.0, tv_weight=1e4,
        style_statistic="gram", gram_norm="hw", tv_kind="magenta", palette_gradient="fixed"))

    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=1000,
        end_learning_rate_factor=0.05, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0,
        predictor_lr_multiplier=1.0, embedding_lr_multiplier=1.0, transfer_lr_multiplier=1.0,
        grad_clip_norm=0.0))

    c.train = ml_collections.ConfigDict(dict(
        num_steps=200_000, init_from=None, batch_size=8, dtype="bfloat16",
        time_budget_s=0.0, plan_after_steps=20,
        log_every=100, checkpoint_every=5000, keep_checkpoints=3, async_checkpoints=True,
        sample_every=5000, sample_size=256,
        sample_contents=("chelsea", "astronaut", "coffee"),
        sample_styles=("strokes", "mosaic", "waves", "cubist"),
        export_dtype="float32"))

    content, style = data_dirs()
    c.data = default_data_config()  # every data field, so --set data.X=... works for all
    c.data.update(dict(source="folder", content_dirs=content, style_dirs=style,
                       image_size=256, style_size=256))

    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address=None, num_processes=None, process_id=None))
    return c
