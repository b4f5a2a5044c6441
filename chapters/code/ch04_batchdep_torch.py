import torch

torch.manual_seed(0)
bn = torch.nn.BatchNorm1d(3)                       # 3 features
x = 5 * torch.randn(1, 3) + 12                     # the example we follow
batch_a = torch.cat([x, 5 * torch.randn(3, 3) + 12])   # x with companions like it
batch_b = torch.cat([x, 5 * torch.randn(7, 3) + 30])   # x with other companions

bn.train()                                         # batch statistics
train_a, train_b = bn(batch_a)[0], bn(batch_b)[0]
bn.eval()                                          # running statistics
eval_a, eval_b = bn(batch_a)[0], bn(batch_b)[0]
eval_alone = bn(x)[0]                              # a batch of one is fine in eval

train_diff = (train_a - train_b).abs().max().item()
eval_diff = max((eval_a - eval_b).abs().max().item(), (eval_a - eval_alone).abs().max().item())
print("train mode, x in batch A:", train_a.detach().numpy().round(4))
print("train mode, x in batch B:", train_b.detach().numpy().round(4))
print("eval mode,  x in batch A:", eval_a.detach().numpy().round(4))
print("eval mode,  x in batch B:", eval_b.detach().numpy().round(4))
print("eval mode,  x alone     :", eval_alone.detach().numpy().round(4))
print(f"max |A - B| in train mode: {train_diff:.4f};  in eval mode (A, B, alone): {eval_diff:.1e}")
