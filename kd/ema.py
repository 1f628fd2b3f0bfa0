"""An exponential moving average (EMA) of a model's weights, updated after every step."""
import torch
from torch.optim.swa_utils import AveragedModel

# The decay every training script keeps its EMA with by default, chosen on the validation
# split (docs/results.md, EMA).
EMA_DECAY = 0.995


class ModelEMA(AveragedModel):
    """torch.optim.swa_utils.AveragedModel with EMA updates (get_ema_multi_avg_fn's, one
    torch._foreach_lerp_ over all weights, over tensor lists made once) and its update count
    kept on the host.

    Update n (from 0) sets EMA = d * EMA + (1 - d) * model with d = min(1 - 1/(n + 1),
    decay), the mean-teacher warm-up (Tarvainen and Valpola, 2017): the first update copies
    the model, and until d reaches `decay`, after 1/(1 - decay) - 1 updates (99 for 0.99,
    199 for 0.995, 999 for 0.999), the EMA is the plain mean of every weight so far, so
    neither the starting point nor the first noisy steps dominate, and from then on `decay`
    alone decides. BatchNorm buffers are averaged like the weights (use_buffers=True): the
    EMA's running statistics are the average of the model's, which approximates (not
    equals) what the averaged weights' own activations give; swa_utils.update_bn, a forward
    pass over the training set, would give those, and is not run.

    AveragedModel.update_parameters reads its count from a device tensor twice per update,
    which on a GPU stalls the host until every queued kernel has run; here the count is a
    Python int, so an update only queues kernels.
    """

    def __init__(self, model, decay):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.updates = 0
        self._lists = None  # see _tensor_lists; made at the first update

    def decay_at(self, update):
        return min(1 - 1 / (update + 1), self.decay)

    def _apply(self, *args, **kwargs):
        # .to() and .cuda() replace buffers (and move parameters): list them anew
        self._lists = None
        return super()._apply(*args, **kwargs)

    def _tensor_lists(self, model):
        """The EMA's tensors and the model's, as (EMA list, model list) for the floating ones
        and for the integer ones (BatchNorm's batch counts), listed once per model: walking
        both modules every step costs more host time than the update's launches. The model's
        parameters are held themselves, not detached aliases, so a model loaded
        (load_state_dict copies into them) or given another layout (.to() sets their data)
        is still the one followed; a model whose buffers are replaced after the first update
        (moved to another device, loaded with assign=True) needs a fresh ModelEMA."""
        if self._lists is None or self._lists[0] is not model:
            pairs = list(zip([*self.module.parameters(), *self.module.buffers()],
                             [*model.parameters(), *model.buffers()], strict=True))
            floating = [pair for pair in pairs if pair[0].is_floating_point()]
            integer = [pair for pair in pairs if not pair[0].is_floating_point()]
            self._lists = (model, unzip(floating), unzip(integer))
        return self._lists[1:]

    @torch.no_grad()
    def update_parameters(self, model):
        (ema_floating, model_floating), (ema_integer, model_integer) = self._tensor_lists(model)
        if self.updates == 0:
            torch._foreach_copy_(ema_floating + ema_integer, model_floating + model_integer)
        else:
            decay = self.decay_at(self.updates)
            # get_ema_multi_avg_fn's update: one fused lerp over every floating tensor
            torch._foreach_lerp_(ema_floating, model_floating, 1 - decay)
            if ema_integer:
                average_integers(ema_integer, model_integer, decay)
        self.updates += 1
        self.n_averaged += 1  # AveragedModel's own count, kept true; never read on the host

    def load_updates(self, updates):
        self.updates = updates
        self.n_averaged.fill_(updates)


def unzip(pairs):
    return [a for a, _ in pairs], [b for _, b in pairs]


def average_integers(ema_list, model_list, decay):
    """AveragedModel's EMA of integer tensors, e * decay + m * (1 - decay) in float32 and
    truncated back, for all of them at once: the same arithmetic element by element (so the
    same bits) in 6 launches, where a loop over BatchNorm's batch counts takes 4 per layer."""
    def flat(tensors):
        return torch.cat([t.reshape(-1) for t in tensors])
    averaged = flat(ema_list) * decay + flat(model_list) * (1 - decay)
    chunks = averaged.split([e.numel() for e in ema_list])
    torch._foreach_copy_(ema_list, [c.view(e.shape) for c, e in zip(chunks, ema_list)])
