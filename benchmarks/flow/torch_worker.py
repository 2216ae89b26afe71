"""PyTorch/torchdiffeq FFJORD for step_time.py, run with the torch venv's python as a subprocess.

The same job as odezoo's flow: field 3→64→64→64→2 tanh on (z, t), initial weights, data and
Rademacher noise from common.py, dopri5 rtol = atol = 1e-5, Adam 1e-3, batch 512, and tfp's
convention (data at t = 1, base at t = 0): x is carried to the base by dz/ds = g(s, z) = −f(1 − s, z),
s ∈ [0, 1], with dl/ds = tr(∂g/∂z) estimated as εᵀ(∂g/∂z)ε (one autograd VJP, create_graph=True);
log q(x) = log N(z(1)) + l(1). Two independent models: "adjoint" (odeint_adjoint, adjoint
tolerances = forward ones) and "backprop" (odeint, autograd through the solver).

Protocol (one JSON line per request on stdin → one JSON line on stdout):
    {"mode": "adjoint", "steps": 20}  →  {"mode": ..., "steps": [[wall_s, cpu_s, nfe_fwd, nfe_bwd, loss], ...]}
"""

import argparse
import json
import math
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--data", default="8gaussians")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--tol", type=float, default=1e-5)
ap.add_argument("--lr", type=float, default=1e-3)
args = ap.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchdiffeq import odeint, odeint_adjoint  # noqa: E402

torch.set_num_threads(args.threads)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


class Field(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.linears = torch.nn.ModuleList()
        for W, b in weights:
            lin = torch.nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            self.linears.append(lin)
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        h = torch.cat([z, torch.full_like(z[:, :1], float(t))], dim=1)
        for lin in self.linears[:-1]:
            h = torch.tanh(lin(h))
        return self.linears[-1](h)


class InverseDynamics(torch.nn.Module):
    """(z, l) ↦ (g, εᵀ(∂g/∂z)ε) with g(s, z) = −f(1 − s, z)."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.eps = None

    def forward(self, s, state):
        z, _ = state
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            g = -self.field(1.0 - s, z)
            vjp = torch.autograd.grad(g, z, self.eps, create_graph=True)[0]
        return g, (vjp * self.eps).sum(dim=1)


class Runner:
    def __init__(self, mode):
        self.mode = mode
        self.field = Field(common.init_weights(args.seed))
        self.dyn = InverseDynamics(self.field)
        self.opt = torch.optim.Adam(self.field.parameters(), lr=args.lr)
        self.rng_x, self.rng_e = common.streams(args.seed)
        self.span = torch.tensor([0.0, 1.0])

    def step(self):
        x = torch.from_numpy(common.sample(args.data, self.rng_x, common.BATCH))
        self.dyn.eps = torch.from_numpy(common.rademacher(self.rng_e, (common.BATCH, 2)))
        w0, c0 = time.perf_counter(), time.process_time()
        n0 = self.field.nfe
        self.opt.zero_grad(set_to_none=True)
        state = (x, torch.zeros(x.shape[0]))
        kw = dict(rtol=args.tol, atol=args.tol, method="dopri5")
        if self.mode == "adjoint":
            z, l = odeint_adjoint(self.dyn, state, self.span, adjoint_params=tuple(self.field.parameters()), **kw)
        else:
            z, l = odeint(self.dyn, state, self.span, **kw)
        z, l = z[-1], l[-1]
        loss = -(-0.5 * (z**2).sum(dim=1) - math.log(2 * math.pi) + l).mean()
        n1 = self.field.nfe
        loss.backward()
        self.opt.step()
        n2 = self.field.nfe
        loss = float(loss.detach())
        return [time.perf_counter() - w0, time.process_time() - c0, n1 - n0, n2 - n1, loss]


def main():
    runners = {m: Runner(m) for m in ("adjoint", "backprop")}
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        r = runners[req["mode"]]
        print(json.dumps({"mode": req["mode"], "steps": [r.step() for _ in range(int(req["steps"]))]}), flush=True)


if __name__ == "__main__":
    main()
