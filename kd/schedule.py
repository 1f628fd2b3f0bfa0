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


def make_optimizer(parameters, args, device):
    """The optimizer of `parameters` (the model's and the method's, one group, one schedule).
    On a GPU its step is one fused kernel per parameter group instead of a few per tensor;
    on the CPU the default (foreach) step is kept, which every exact-resume and
    same-weights check was made with."""
    parameters = list(parameters)
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    if args.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=args.lr, weight_decay=args.weight_decay, **fused)
    return torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum,
                           nesterov=args.momentum > 0, weight_decay=args.weight_decay, **fused)


def load_optimizer_state(optimizer, state):
    """optimizer.load_state_dict(state), keeping the step kernels (fused, foreach) that
    make_optimizer chose for this device: the state records the device it was saved on."""
    kernels = [{key: group.get(key) for key in ("fused", "foreach")}
               for group in optimizer.param_groups]
    # Given before loading, so that torch places the state (Adam's step count: on the
    # parameters' device for fused steps, on the CPU otherwise) as this device's step wants.
    optimizer.load_state_dict({**state, "param_groups": [
        {**group, **chosen} for group, chosen in zip(state["param_groups"], kernels)]})
