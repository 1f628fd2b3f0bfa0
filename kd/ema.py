"""An exponential moving average (EMA) of a model's weights, updated after every step."""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# The decay every training script keeps its EMA with by default, chosen on the validation
# split (README, EMA).
EMA_DECAY = 0.995


class ModelEMA(AveragedModel):
    """torch.optim.swa_utils.AveragedModel with EMA updates (get_ema_multi_avg_fn, one
    torch._foreach_lerp_ over all weights) and its update count kept on the host.

    Update n (from 0) sets EMA = d * EMA + (1 - d) * model with d = min(1 - 1/(n + 1),
    decay), the mean-teacher warm-up (Tarvainen and Valpola, 2017): the first update copies
    the model, and until d reaches `decay`, after 1/(1 - decay) - 1 updates (99 for 0.99,
    199 for 0.995, 999 for 0.999), the EMA is the plain mean of every weight so far, so
    neither the starting point nor the first noisy steps dominate, and from then on `decay`
    alone decides. BatchNorm buffers are averaged like the weights (use_buffers=True), so
    the EMA's running statistics belong to the averaged weights and no update_bn pass is
    needed.

    AveragedModel.update_parameters reads its count from a device tensor twice per update,
    which on a GPU stalls the host until every queued kernel has run; here the count is a
    Python int, so an update only queues kernels.
    """

    def __init__(self, model, decay):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.updates = 0

    def decay_at(self, update):
        return min(1 - 1 / (update + 1), self.decay)

    @torch.no_grad()
    def update_parameters(self, model):
        ema_tensors = [*self.module.parameters(), *self.module.buffers()]
        model_tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.updates == 0:
            for e, m in zip(ema_tensors, model_tensors):
                e.copy_(m)
        else:
            average = get_ema_multi_avg_fn(self.decay_at(self.updates))
            for floating in (True, False):  # BatchNorm's integer batch count on its own
                pairs = [(e, m) for e, m in zip(ema_tensors, model_tensors)
                         if e.is_floating_point() == floating]
                if pairs:
                    average(*map(list, zip(*pairs)), None)
        self.updates += 1
        self.n_averaged += 1  # AveragedModel's own count, kept true; never read on the host

    def load_updates(self, updates):
        self.updates = updates
        self.n_averaged.fill_(updates)
