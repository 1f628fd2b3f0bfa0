"""The optimizer and its learning-rate schedule."""
import torch


def lr_factor(step, steps_per_epoch, start_epoch, epochs, schedule, warmup):
    """LR multiplier at optimizer `step`; the schedule spans epochs [start_epoch, epochs)."""
    if schedule == "constant":
        return 1.0
    total = max((epochs - start_epoch) * steps_per_epoch, 1)
    t = (step - start_epoch * steps_per_epoch) / total
    if t < warmup:
        return min(1.0, (t + 1 / total) / warmup)  # the first step at a small non-zero LR
    return max(0.0, (1 - t) / (1 - warmup))


def make_optimizer(model, args):
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                           nesterov=args.momentum > 0, weight_decay=args.weight_decay)
