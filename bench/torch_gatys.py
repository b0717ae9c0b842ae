"""PyTorch eager reference of the Gatys optimizer, for ``bench/gatys.py``.

Same network, loss and parameterization as :mod:`arbitrary_nst.gatys` with its default
:class:`~arbitrary_nst.gatys.GatysConfig`:

* VGG16 conv base with the **same ImageNet weights** (``arbitrary_nst.weights.load()``, HWIO ->
  OIHW), Keras "caffe" preprocessing inside (RGB -> BGR, x255, minus the ImageNet mean), ReLU,
  2x2/2 max pooling;
* content loss: feature MSE per example; style loss: MSE between Gram matrices normalized by
  ``C*H*W``; TV: ``0.5 * (mean(dy^2) + mean(dx^2))`` per example; per-layer and global weights
  as in the config;
* pixels through the same "softclip" map ``x = (softplus(k z) - softplus(k (z - 1))) / k``;
* channels-last tensors (faster oneDNN convolutions on CPU than NCHW);
* ``torch.optim.LBFGS`` (eager), ``lr=1``, ``line_search_fn="strong_wolfe"``, ``history_size``
  = the config's L-BFGS memory, tolerances disabled. (neural-style and pystiche run it without a
  line search; on these images that diverges in the first iterations - the softclip pixels
  saturate and the loss sticks at ~1e9 - so the reference uses torch's Wolfe line search, which
  is also the closest match to ours.) An iteration may use several closure evaluations, like
  ours; both are counted. The batch is one tensor and the objective is the sum over examples
  (torch's LBFGS cannot keep examples apart).

Needs ``torch`` (CPU wheel: ``pip install torch==2.13.0``); not a project requirement.
"""
from __future__ import annotations

import time

import numpy as np

if __name__ == "__main__":  # a module of bench/gatys.py, not a command (it has no options)
    raise SystemExit("bench/torch_gatys.py is the PyTorch reference that bench/gatys.py imports; "
                     "run `python bench/gatys.py --help` (its torch columns need "
                     "`pip install torch==2.13.0`)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from arbitrary_nst import weights as weights_lib  # noqa: E402

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))  # (block, convs)
SHARPNESS = 30.0


#: channels-last (NHWC) tensors: about 2x faster convolutions than NCHW with torch's CPU
#: (oneDNN) kernels, so the reference is the faster of the two eager layouts
CL = torch.channels_last


def _to_torch(images: np.ndarray, device) -> torch.Tensor:
    """NHWC numpy -> NCHW-shaped tensor in channels-last memory."""
    x = torch.tensor(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))), device=device)
    return x.contiguous(memory_format=CL)


def relu_taps_order() -> list[str]:
    return [f"relu{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1)]


class TorchVGG16(torch.nn.Module):
    """VGG16 conv base returning the requested ``relu{b}_{i}`` taps (NCHW)."""

    def __init__(self, params=None, device="cpu"):
        super().__init__()
        params = weights_lib.load() if params is None else params
        self.kernels, self.biases = {}, {}
        for b, n in BLOCKS:
            for i in range(1, n + 1):
                name = f"conv{b}_{i}"
                k = np.transpose(np.asarray(params[name]["kernel"]), (3, 2, 0, 1)).copy()
                self.kernels[name] = torch.tensor(k, device=device).contiguous(memory_format=CL)
                self.biases[name] = torch.tensor(np.asarray(params[name]["bias"]), device=device)
        self.mean = torch.tensor(CAFFE_MEAN_BGR, device=device).view(1, 3, 1, 1)

    def forward(self, images: torch.Tensor, taps) -> dict[str, torch.Tensor]:
        """``images``: ``[B, 3, H, W]`` RGB in [0, 1]."""
        wanted = set(taps)
        last = max(relu_taps_order().index(t) for t in taps)
        x = images[:, [2, 1, 0]] * 255.0 - self.mean
        out, k = {}, 0
        for b, n in BLOCKS:
            for i in range(1, n + 1):
                name = f"conv{b}_{i}"
                x = F.relu(F.conv2d(x, self.kernels[name], self.biases[name], padding=1))
                tap = f"relu{b}_{i}"
                if tap in wanted:
                    out[tap] = x
                if k == last:
                    return out
                k += 1
            x = F.max_pool2d(x, 2)
        return out


def softclip(z: torch.Tensor) -> torch.Tensor:
    return (F.softplus(z, beta=SHARPNESS) - F.softplus(z - 1.0, beta=SHARPNESS))


def inverse_softclip(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-3, 1 - 1e-3)
    lo, hi = torch.full_like(x, -1.0), torch.full_like(x, 2.0)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        below = softclip(mid) < x
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    x = f.reshape(b, c, h * w)
    return x @ x.transpose(1, 2) / (c * h * w)


class TorchGatys:
    """The loss of ``config`` (a :class:`arbitrary_nst.gatys.GatysConfig` with statistic
    "gram", norm "chw", TV "magenta") against per-example content and style targets."""

    def __init__(self, config, content: np.ndarray, style: np.ndarray, params=None,
                 device="cpu"):
        if config.style_statistic != "gram" or config.gram_norm != "chw" \
                or config.tv_kind != "magenta" or config.pooling != "max":
            raise ValueError("the torch reference implements gram/chw/magenta/max only")
        self.cfg = config
        self.device = device
        self.vgg = TorchVGG16(params, device)
        self.content_layers = dict(config.content_layers)
        self.style_layers = config.effective_style_layers()
        c = _to_torch(content, device)
        s = _to_torch(style, device)
        with torch.no_grad():
            self.content = c
            self.content_feats = self.vgg(c, list(self.content_layers))
            sf = self.vgg(s, list(self.style_layers))
            self.style_grams = {k: gram(v) for k, v in sf.items()}

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example weighted terms ``[B]`` of images ``x`` (``[B, 3, H, W]``)."""
        cfg = self.cfg
        feats = self.vgg(x, list(dict.fromkeys([*self.content_layers, *self.style_layers])))
        b = x.shape[0]
        content = sum(w * ((feats[k] - self.content_feats[k]) ** 2).reshape(b, -1).mean(1)
                      for k, w in self.content_layers.items())
        style = sum(w * ((gram(feats[k]) - self.style_grams[k]) ** 2).reshape(b, -1).mean(1)
                    for k, w in self.style_layers.items())
        dy = x[:, :, 1:, :] - x[:, :, :-1, :]
        dx = x[:, :, :, 1:] - x[:, :, :, :-1]
        tv = 0.5 * ((dy ** 2).reshape(b, -1).mean(1) + (dx ** 2).reshape(b, -1).mean(1))
        t = {"content": cfg.content_weight * content, "style": cfg.style_weight * style,
             "tv": cfg.tv_weight * tv}
        t["total"] = t["content"] + t["style"] + t["tv"]
        return t

    def loss_of_images(self, images: np.ndarray) -> np.ndarray:
        """Total loss ``[B]`` of NHWC images (for cross-checking against JAX)."""
        with torch.no_grad():
            x = _to_torch(images, self.device)
            return self.terms(x)["total"].cpu().numpy()

    def optimize(self, iterations: int) -> dict:
        """``iterations`` L-BFGS iterations from the content; returns timing and final loss."""
        # torch's LBFGS flattens params with .view(-1): keep z contiguous (NCHW) and switch to
        # channels-last for the network inside the objective
        z = inverse_softclip(self.content.clone()).contiguous().requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=iterations, max_eval=10 * iterations,
                                tolerance_grad=-1.0, tolerance_change=-1.0,
                                history_size=self.cfg.lbfgs_memory,
                                line_search_fn="strong_wolfe")
        evals = [0]

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = self.terms(softclip(z).contiguous(memory_format=CL))["total"].sum()
            loss.backward()
            evals[0] += 1
            return loss

        if self.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step(closure)
        if self.device != "cpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        n_iter = opt.state[opt._params[0]]["n_iter"]
        with torch.no_grad():
            x = softclip(z)
            final = {k: v.cpu().numpy() for k, v in self.terms(x).items()}
        return {"seconds": seconds, "iterations": int(n_iter), "evaluations": evals[0],
                "final": final, "images": np.transpose(x.detach().cpu().numpy(), (0, 2, 3, 1))}
