import numpy as np
import torch

# 300 image batches (N, C, H, W) = (4, 2, 3, 3): n = N*H*W = 36 values per channel.
rng = np.random.default_rng(0)
scale, shift = np.array([5.0, 0.5]), np.array([12.0, -3.0])   # per channel
batches = (rng.normal(size=(300, 4, 2, 3, 3)) * scale[:, None, None]
           + shift[:, None, None]).astype("float32")

bn = torch.nn.BatchNorm2d(2)                       # momentum=0.1, eps=1e-5
cumulative = torch.nn.BatchNorm2d(2, momentum=None)
run_mean, run_var, cum_mean = [], [], []
for xb in batches:
    xb = torch.from_numpy(xb)
    bn(xb), cumulative(xb)                         # training mode: updates buffers
    run_mean.append(bn.running_mean.numpy().copy())
    run_var.append(bn.running_var.numpy().copy())
    cum_mean.append(cumulative.running_mean.numpy().copy())
run_mean, run_var, cum_mean = map(np.array, (run_mean, run_var, cum_mean))
print("eps:", bn.eps, " momentum:", bn.momentum, " batches tracked:", int(bn.num_batches_tracked))
print("running_var after 5 batches:", run_var[4])
