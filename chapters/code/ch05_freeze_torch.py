import torch

torch.manual_seed(0)
x = 5 * torch.randn(32, 4) + 12
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
model(x)                                # "pretraining": the running statistics move
bn = model[1]

bn.eval()                               # freeze = inference mode ...
bn.requires_grad_(False)                # ... and no gradients for weight and bias
before = {k: v.clone() for k, v in bn.state_dict().items()}
print("bn.training after bn.eval():", bn.training)

model.train()                           # the first line of a typical training loop
print("bn.training after model.train():", bn.training)
model(x)
print("buffers changed by one forward pass:",
      [k for k, v in bn.state_dict().items() if not torch.equal(before[k], v)])
