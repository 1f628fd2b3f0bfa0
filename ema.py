"""An exponential moving average (EMA) of a model's weights, updated after every step."""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEMA(AveragedModel):
    """torch.optim.swa_utils.AveragedModel with EMA updates (get_ema_multi_avg_fn, one
    torch._foreach_lerp_ over all weights) and its update count kept on the host.

    AveragedModel.update_parameters reads its count from a device tensor twice per update,
    which on a GPU stalls the host until every queued kernel has run; here the count is a
    Python int, so an update only queues kernels. BatchNorm buffers are averaged like the
    weights (use_buffers=True), so the EMA's running statistics belong to the averaged weights
    and no update_bn pass is needed. The first update copies the model; after it the decay
    warms up as min(decay, (1 + n) / (10 + n)) for update n, so a short run is not dominated
    by the EMA's starting point. Decay 1 switches the warm-up off too: the EMA keeps its
    first copy.
    """

    def __init__(self, model, decay):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.updates = 0

    def decay_at(self, update):
        return self.decay if self.decay == 1 else min(self.decay, (1 + update) / (10 + update))

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
