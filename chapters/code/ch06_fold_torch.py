import torch

import bnlib

torch.manual_seed(0)
linear, bn = torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)
model = torch.nn.Sequential(linear, bn)
with torch.no_grad():
    bn.weight.uniform_(0.5, 2.0); bn.bias.uniform_(-1.0, 1.0)   # non-trivial gamma, beta
    for _ in range(20):                                         # running statistics
        model(3 * torch.randn(16, 5) + 2)
model.eval()                                                    # folding is for eval only

W, b = bnlib.fold_batchnorm(
    linear.weight.detach().numpy(), linear.bias.detach().numpy(),
    bn.weight.detach().numpy(), bn.bias.detach().numpy(),
    bn.running_mean.numpy(), bn.running_var.numpy(), eps=bn.eps, out_axis=0)
folded = torch.nn.Linear(5, 4)
with torch.no_grad():
    folded.weight.copy_(torch.from_numpy(W)); folded.bias.copy_(torch.from_numpy(b))

x = 3 * torch.randn(1000, 5) + 2
with torch.no_grad():
    diff = (model(x) - folded(x)).abs().max().item()
print(f"max |Linear+BN (eval) - folded Linear|, float32: {diff:.1e}")
