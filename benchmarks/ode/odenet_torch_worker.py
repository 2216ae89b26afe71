"""torchdiffeq's ODE-Net (its examples/odenet_mnist.py architecture), served to ``odenet_step.py``.

Run in a Python with torch and torchdiffeq (and numpy); imports nothing of odezoo or
TensorFlow. The model is written here from the paper's description and torchdiffeq's
example: downsampling convs with GroupNorm-ReLU, an ODE block whose field is
GN-ReLU-ConcatConv3x3-GN-ReLU-ConcatConv3x3-GN (t prepended as a channel), solved by
dopri5 over [0, 1] with ``odeint_adjoint``; then GN-ReLU, average pooling, a linear head,
cross-entropy and Adam. Weights and the batch come from the driver's .npz (odezoo's
weights, transposed to torch's layouts), so both frameworks solve the same ODE.

Protocol: one JSON object per line on stdin, one reply per line on stdout:
    {"cmd": "load", "npz": PATH, "stem": "same"|"reference", "tol": 1e-3, "adjoint": true}
    {"cmd": "probs"}         -> {"probs": [[...]], "loss": x}  (no update; the initial answers)
    {"cmd": "grads"}         -> {"npz": PATH} (the loss's gradients at the current weights, keras layouts)
    {"cmd": "step"}          -> {"s": seconds, "loss": x, "nfe_fwd": n, "nfe_bwd": n}
    {"cmd": "field", "repeats": n} -> {"field_ms": x, "field_vjp_ms": y} (one evaluation alone, median)
    {"cmd": "quit"}
"""

import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torchdiffeq import odeint, odeint_adjoint


def norm(dim):
    return nn.GroupNorm(min(32, dim), dim)


class ConcatConv2d(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.layer = nn.Conv2d(dim_in + 1, dim_out, 3, 1, 1)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1]) * t
        return self.layer(torch.cat([tt, x], 1))


class ODEfunc(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.conv1 = norm(dim), ConcatConv2d(dim, dim)
        self.norm2, self.conv2 = norm(dim), ConcatConv2d(dim, dim)
        self.norm3 = norm(dim)
        self.relu = nn.ReLU(inplace=True)
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        out = self.conv1(t, self.relu(self.norm1(x)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


class ODEBlock(nn.Module):
    def __init__(self, odefunc, tol, adjoint):
        super().__init__()
        self.odefunc, self.tol, self.adjoint = odefunc, tol, adjoint
        self.integration_time = torch.tensor([0.0, 1.0])

    def forward(self, x):
        solve = odeint_adjoint if self.adjoint else odeint
        out = solve(self.odefunc, x, self.integration_time, rtol=self.tol, atol=self.tol, method="dopri5")
        return out[1]


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


def build(dim, stem, tol, adjoint, mean, std):
    """``stem="reference"``: torchdiffeq's (28 -> 26 -> 13 -> 6); ``"same"``: odezoo's padding (28 -> 14 -> 7)."""
    first_pad = 0 if stem == "reference" else 1
    down = [
        Normalize(mean, std),
        nn.Conv2d(1, dim, 3, 1, first_pad),
        norm(dim),
        nn.ReLU(inplace=True),
        nn.Conv2d(dim, dim, 4, 2, 1),
        norm(dim),
        nn.ReLU(inplace=True),
        nn.Conv2d(dim, dim, 4, 2, 1),
    ]
    func = ODEfunc(dim)
    head = [norm(dim), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(dim, 10)]
    return nn.Sequential(*down, ODEBlock(func, tol, adjoint), *head), func


# odezoo layer name -> (torch module path, kind); "cat" = a ConcatConv2d (odezoo appends t last)
def mapping(model):
    m = model
    return {
        "stem_conv1": (m[1], "conv"),
        "stem_norm1": (m[2], "norm"),
        "stem_conv2": (m[4], "conv"),
        "stem_norm2": (m[5], "norm"),
        "stem_conv3": (m[7], "conv"),
        "field/norm1": (m[8].odefunc.norm1, "norm"),
        "field/conv1": (m[8].odefunc.conv1.layer, "cat"),
        "field/norm2": (m[8].odefunc.norm2, "norm"),
        "field/conv2": (m[8].odefunc.conv2.layer, "cat"),
        "field/norm3": (m[8].odefunc.norm3, "norm"),
        "head_norm": (m[9], "norm"),
        "classifier": (m[13], "dense"),
    }


def to_torch_kernel(k, kind):
    if kind == "dense":
        return k.T
    w = np.transpose(k, (3, 2, 0, 1))  # (kh, kw, in, out) -> (out, in, kh, kw)
    if kind == "cat":  # t is odezoo's last input channel, torchdiffeq's first
        w = np.concatenate([w[:, -1:], w[:, :-1]], 1)
    return w


def to_keras_kernel(w, kind):
    if kind == "dense":
        return w.T
    if kind == "cat":
        w = np.concatenate([w[:, 1:], w[:, :1]], 1)
    return np.transpose(w, (2, 3, 1, 0))


class Worker:
    def load(self, msg):
        d = np.load(msg["npz"])
        torch.manual_seed(0)
        self.x = torch.tensor(np.transpose(d["x"], (0, 3, 1, 2)).copy())
        self.y = torch.tensor(d["y"].astype(np.int64))
        dim = int(d["channels"])
        self.model, self.func = build(
            dim, msg["stem"], msg["tol"], msg["adjoint"], float(d["norm_mean"]), float(d["norm_std"])
        )
        self.map = mapping(self.model)
        with torch.no_grad():
            for name, (mod, kind) in self.map.items():
                if kind == "norm":
                    mod.weight.copy_(torch.tensor(d[name + ":gamma"]))
                    mod.bias.copy_(torch.tensor(d[name + ":beta"]))
                else:
                    mod.weight.copy_(torch.tensor(to_torch_kernel(d[name + ":kernel"], kind).copy()))
                    mod.bias.copy_(torch.tensor(d[name + ":bias"]))
        # Keras's Adam: epsilon 1e-7
        self.opt = torch.optim.Adam(self.model.parameters(), lr=float(d["lr"]), eps=1e-7)
        self.loss_fn = nn.CrossEntropyLoss()
        return dict(ok=True, threads=torch.get_num_threads(), torch=torch.__version__)

    def probs(self, msg):
        with torch.no_grad():
            logits = self.model(self.x)
            loss = self.loss_fn(logits, self.y)
        return dict(probs=torch.softmax(logits, 1).numpy().tolist(), loss=float(loss), nfe_fwd=self._nfe())

    def _nfe(self):
        n, self.func.nfe = self.func.nfe, 0
        return n

    def grads(self, msg):
        self.opt.zero_grad()
        self._nfe()
        loss = self.loss_fn(self.model(self.x), self.y)
        loss.backward()
        out = {}
        for name, (mod, kind) in self.map.items():
            if kind == "norm":
                out[name + ":gamma"], out[name + ":beta"] = mod.weight.grad.numpy(), mod.bias.grad.numpy()
            else:
                out[name + ":kernel"] = to_keras_kernel(mod.weight.grad.numpy(), kind)
                out[name + ":bias"] = mod.bias.grad.numpy()
        np.savez(msg["out"], **out)
        self.opt.zero_grad()
        return dict(npz=msg["out"], loss=float(loss.detach()))

    def step(self, msg):
        self._nfe()
        t0 = time.perf_counter()
        self.opt.zero_grad()
        logits = self.model(self.x)
        nfe_fwd = self._nfe()
        loss = self.loss_fn(logits, self.y)
        loss.backward()
        self.opt.step()
        s = time.perf_counter() - t0
        return dict(s=s, loss=float(loss.detach()), nfe_fwd=nfe_fwd, nfe_bwd=self._nfe())

    def field(self, msg):
        """Per evaluation: the field, and the field with its VJP (state and weights), on the ODE state.

        ``repeats`` evaluations in a row (the state carried, as odezoo's loop does); median of 5 / repeats.
        """
        with torch.no_grad():
            z0 = self.model[:8](self.x)
        t = torch.tensor(0.5)
        params = list(self.func.parameters())
        k = msg["repeats"]

        def run_fwd():
            z = z0
            with torch.no_grad():
                for _ in range(k):
                    z = z + 1e-3 * self.func(t, z)

        def run_vjp():
            z, a = z0, torch.ones_like(z0)
            acc = [torch.zeros_like(p) for p in params]
            for _ in range(k):
                zz = z.detach().requires_grad_(True)
                f = self.func(t, zz)
                g = torch.autograd.grad(f, [zz] + params, a)
                z, a = (z + 1e-3 * f).detach(), a + 1e-3 * g[0]
                acc = [u + v for u, v in zip(acc, g[1:])]

        out = {}
        for key, fn in (("field_ms", run_fwd), ("field_vjp_ms", run_vjp)):
            fn()
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[key] = 1e3 * statistics.median(times) / k
        self._nfe()
        return out


def main():
    worker = Worker()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        reply = getattr(worker, msg["cmd"])(msg)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
