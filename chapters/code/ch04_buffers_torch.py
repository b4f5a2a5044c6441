import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                            torch.nn.ReLU(), torch.nn.Linear(4, 1))
bn = model[1]
print("parameters (get gradients):", [name for name, _ in bn.named_parameters()])
print("buffers (no gradients):    ", [name for name, _ in bn.named_buffers()])
print("running_mean.requires_grad:", bn.running_mean.requires_grad)

x, y = 5 * torch.randn(16, 3) + 12, torch.randn(16, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
snapshot = lambda: {k: v.clone() for k, v in bn.state_dict().items()}
changed = lambda before: [k for k, v in bn.state_dict().items() if not torch.equal(before[k], v)]

model.eval()                                       # 1. gradient step, eval-mode forward
before = snapshot()
loss = torch.nn.functional.mse_loss(model(x), y)
opt.zero_grad(); loss.backward(); opt.step()
print("changed by an SGD step (eval mode):      ", changed(before))

model.train()                                      # 2. forward only, no gradients at all
before = snapshot()
with torch.no_grad():
    model(x)
print("changed by a forward pass (train mode):  ", changed(before))
