"""The XConv operators as a PyTorch user calls them: torch.ops.load_library, then torch.ops.xtrain.*."""
import sys

import torch

torch.ops.load_library(sys.argv[1])
torch.manual_seed(0)
failures = []
checks = []


def check(name, ok):
    print(("ok   " if ok else "FAIL ") + name)
    checks.append(name)
    if not ok:
        failures.append(name)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# 2-D: r = S with orthogonal probes gives autograd's weight gradient; output, dX, db exact.
x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
b = torch.randn(6, dtype=torch.float64)
g = torch.randn(2, 6, 4, 3, dtype=torch.float64)
args = dict(stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=2)

xe, we, be = (t.clone().requires_grad_() for t in (x, w, b))
ye = torch.nn.functional.conv2d(xe, we, be, **args)
ye.backward(g)
xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
ys = torch.ops.xtrain.xconv2d(xs, ws, bs, [2, 2], [1, 1], [1, 1], 2, 7 * 6, "independent", "orthogonal", 3)
ys.backward(g)
check("xconv2d output exact", rel(ys, ye) < 1e-12)
check("xconv2d dX exact", rel(xs.grad, xe.grad) < 1e-12)
check("xconv2d db exact", rel(bs.grad, be.grad) < 1e-12)
check("xconv2d dW exact at r = S", rel(ws.grad, we.grad) < 1e-6)

# Fewer probes: an estimate (not exact), reproducible for a fixed seed, no bias argument.
def estimate(seed):
    wq = w.clone().requires_grad_()
    torch.ops.xtrain.xconv2d(x, wq, None, [1, 1], [1, 1], [1, 1], 2, 8, "multichannel", "rademacher", seed).sum().backward()
    return wq.grad

check("same seed, same gradient", torch.equal(estimate(5), estimate(5)))
check("seed < 0 draws from the global generator", not torch.equal(estimate(-1), estimate(-1)))

# 3-D.
x3 = torch.randn(1, 2, 4, 5, 3, dtype=torch.float64)
w3 = torch.randn(3, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
w3e = w3.detach().clone().requires_grad_()
torch.ops.xtrain.xconv3d(x3, w3, None, [1], [1], [1], 1, 60, "independent", "orthogonal", 1).sum().backward()
torch.nn.functional.conv3d(x3, w3e, None, padding=1).sum().backward()
check("xconv3d dW exact at r = S", rel(w3.grad, w3e.grad) < 1e-6)

# mask_relu: exact gradient.
a = torch.randn(3, 5, 7, requires_grad=True)
a2 = a.detach().clone().requires_grad_()
ga = torch.randn(3, 5, 7)
torch.ops.xtrain.mask_relu(a).backward(ga)
torch.relu(a2).backward(ga)
check("mask_relu gradient exact", torch.equal(a.grad, a2.grad))

# Bad arguments: a RuntimeError that says what to change.
try:
    torch.ops.xtrain.xconv2d(x, w, b, [1], [1], [1], 2, 4, "diagonal", "gaussian", 0)
    check("unknown mode rejected", False)
except RuntimeError as e:
    check("unknown mode rejected", "use 'independent', 'multichannel' or 'orthogonal'" in str(e))
try:
    torch.ops.xtrain.xconv2d(x, w, b, [1], [1], [1], 2, -3, "independent", "gaussian", 0)
    check("negative probes rejected", False)
except RuntimeError as e:
    check("negative probes rejected", "probes must be >= 0" in str(e))

print(f"{len(checks) - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
