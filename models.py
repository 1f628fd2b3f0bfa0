"""The teacher and student CNNs, their cost, and rebuilding a model from a checkpoint.

Both networks take RGB images as floats in [0, 1] and normalise inside (CIFAR-10 mean/std
are buffers), so a saved model works on raw images with no other knowledge.

`python models.py` prints a per-layer table (output shape, parameters, MACs) of both networks
and the teacher/student ratios.
"""
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kd.checkpoints import CheckpointError, load_checkpoint

# The customary values, from the original 50,000 training images (the validation split
# included) before the JPEG re-encoding: the shared copy's training split differs by under
# 1% (docs/usage.md), a scale and shift that the first conv and its BatchNorm absorb. Kept,
# as every saved model holds them.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def conv_bn_relu(in_channels, out_channels, stride=1, relu=True):
    # BatchNorm after every conv lets a plain (non-residual) stack train at a high learning
    # rate in few epochs; bias=False because BN's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        *([nn.ReLU(inplace=True)] if relu else []),
    )


def pool_relu():
    """The max-pool, with the ReLU of the conv before it (built with relu=False). ReLU is
    monotonic, so max-pool and ReLU commute exactly, in value and gradient (training is
    bit-identical; a test checks): after the pool, ReLU touches a quarter of the
    activations, which makes student training steps faster (ReLU and the other memory-bound
    passes dominate its step; benchmarks/throughput.py times both orders, docs/performance.md
    has the figures). The conv keeps its state-dict keys, so checkpoints from the conv-BN-ReLU-pool
    order load unchanged."""
    return nn.Sequential(nn.MaxPool2d(2), nn.ReLU(inplace=True))


def relu_before_pool(model):
    """`model`, changed in place to the order pool_relu replaced (conv, BN, ReLU, then the
    max-pool), same weights and state-dict keys: the reference that the benchmark times and
    the tests train against."""
    i = next(i for i, layer in enumerate(model.features)
             if isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.MaxPool2d))
    model.features[i - 1].append(nn.ReLU(inplace=True))
    model.features[i] = nn.MaxPool2d(2)
    return model


class _Net(nn.Module):
    """Normalise, run `features`, flatten, then a 256-unit hidden layer and the 10-way output."""

    def __init__(self, features, feature_size, hidden=256):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.features = features
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(feature_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, NUM_CLASSES),
        )
        he_init(self)

    def forward(self, images, features=False):
        """The logits; with `features`, (logits, {"blocks": the output of every entry of
        `features`, "preact": each entry's output before its ReLU (None where it has none),
        "hidden": the 256-unit hidden layer after its ReLU}) from the same forward pass."""
        x = (images - self.mean) / self.std
        if not features:
            return self.classifier(self.features(x))
        blocks, preact = [], []
        for block in self.features:
            relu = block[-1] if isinstance(block[-1], nn.ReLU) else None
            if relu is None:
                x = block(x)
                preact.append(None)
            else:  # the ReLU out of place, so the tensor before it is kept as it was
                pre = block[:-1](x)
                x = torch.relu(pre)
                preact.append(pre)
            blocks.append(x)
        flatten, fc, relu, out = self.classifier
        hidden = relu(fc(flatten(x)))
        return out(hidden), {"blocks": blocks, "preact": preact, "hidden": hidden}


def check_widths(widths, count):
    if len(widths) != count or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ValueError(f"expected {count} positive integer widths, got {list(widths)}")


def he_init(module):
    """Kaiming-normal (fan_in, ReLU gain) weights for every conv and linear layer, zero biases.
    The output layer too, as He initialisation was specified for the whole network: no ReLU
    follows it, so its logits start sqrt(2) times larger than a linear gain would give."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class TeacherNet(_Net):
    """7 convs (the first with 6 filters), one max-pool, strided convs for the rest of the
    downsampling (the rules allow no other pooling), then FC 256.

    32x32: conv 6, conv w0 -> maxpool -> 16x16: conv w1, conv w1 -> stride 2 -> 8x8: conv w2,
    conv w2 -> stride 2 -> 4x4: conv w3 -> flatten (w3*16) -> FC 256 -> 10.

    Widths (32, 64, 128, 256), chosen on the validation split against wider ones for their
    cost (docs/usage.md#models has the probe's figures). The pool sits after the second
    conv, at 32x32 -> 16x16, where it saves the most compute of any single place.
    """

    def __init__(self, widths=(32, 64, 128, 256)):
        check_widths(widths, 4)
        w0, w1, w2, w3 = widths
        features = nn.Sequential(
            conv_bn_relu(3, 6),
            conv_bn_relu(6, w0, relu=False),
            pool_relu(),
            conv_bn_relu(w0, w1),
            conv_bn_relu(w1, w1),
            conv_bn_relu(w1, w2, stride=2),
            conv_bn_relu(w2, w2),
            conv_bn_relu(w2, w3, stride=2),
        )
        super().__init__(features, w3 * 4 * 4)
        self.arch_args = {"widths": list(widths)}


class StudentNet(_Net):
    """2 convs and one max-pool, then FC 256.

    32x32: conv w0 -> maxpool -> 16x16: conv w1 (stride 2) -> 8x8 -> flatten -> FC 256 -> 10.

    Widths (32, 64), chosen on the validation split against wider ones for their cost
    (docs/usage.md#models has the probe's figures): a model whose purpose is to be cheap.
    The second conv is strided so the flattened features (64x8x8) keep the FC layer small.
    """

    def __init__(self, widths=(32, 64)):
        check_widths(widths, 2)
        w0, w1 = widths
        features = nn.Sequential(
            conv_bn_relu(3, w0, relu=False),
            pool_relu(),
            conv_bn_relu(w0, w1, stride=2),
        )
        super().__init__(features, w1 * 8 * 8)
        self.arch_args = {"widths": list(widths)}


MODELS = {"teacher": TeacherNet, "student": StudentNet}


def build_model(name, arch_args=None):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](**(arch_args or {}))


def model_spec(model):
    """What a checkpoint stores to rebuild `model`: its registry name and constructor args."""
    name = next(k for k, cls in MODELS.items() if type(model) is cls)
    return {"name": name, "arch_args": model.arch_args}


def load_model(path, device="cpu", kind=None, ema=False):
    """Rebuild a model from a checkpoint file alone and return it in eval mode on `device`.
    With `kind` ("teacher" or "student"), a checkpoint of the other kind is refused. With
    `ema=True`, the run's EMA model (for mean-teacher, its teacher) instead of the raw one."""
    return model_from_checkpoint(load_checkpoint(path, map_location=device), path, device,
                                 kind, ema)


def model_from_checkpoint(ckpt, path, device="cpu", kind=None, ema=False):
    """The model of an already loaded checkpoint (`path` is for messages)."""
    if ema and "ema" not in ckpt:
        raise CheckpointError(f"{path} holds no EMA model (trained with --ema-decay 0)")
    try:
        name, arch_args = ckpt["model"]["name"], ckpt["model"]["arch_args"]
        state = ckpt["ema"]["model_state"] if ema else ckpt["model_state"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path} holds no model (no model name, arguments or "
                              f"weights)") from None
    if kind is not None and name != kind:
        raise CheckpointError(f"{path} holds a {name}, not a {kind}")
    try:
        model = build_model(name, arch_args)
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as e:  # what nn.Module raises on a mismatch
        reason = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(f"{path}: its weights do not fit its architecture "
                              f"({reason})") from None
    return model.to(device).eval()


def count_macs(model, batch_size=1):
    """Multiply-accumulates of one forward pass per image, from torch.utils.flop_counter."""
    x = torch.rand(batch_size, *IMAGE_SHAPE, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2 // batch_size


def layer_table(model):
    """One row per conv (with its BatchNorm), pool and linear layer:
    (name, output shape, parameters, MACs per image)."""
    rows, counts = [], {}
    x = (torch.rand(1, *IMAGE_SHAPE) - model.mean) / model.std
    model = model.eval()
    for layer in [*model.features, *model.classifier]:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            x = layer(x)
        first = layer[0] if isinstance(layer, nn.Sequential) else layer
        kind = {nn.Conv2d: "conv", nn.MaxPool2d: "maxpool", nn.Linear: "fc"}.get(type(first))
        if kind is None:  # ReLU, Flatten: no parameters, no MACs
            continue
        counts[kind] = counts.get(kind, 0) + 1
        params = sum(p.numel() for p in layer.parameters())
        rows.append((f"{kind}{counts[kind]}", tuple(x.shape[1:]), params,
                     counter.get_total_flops() // 2))
    return rows


def main():
    totals = {}
    for name in MODELS:
        model = build_model(name)
        print(f"\n{name}: {type(model).__name__}{model.arch_args}")
        print(f"{'layer':<10}{'output':>16}{'params':>12}{'MACs':>14}")
        for layer, shape, params, macs in layer_table(model):
            print(f"{layer:<10}{str(shape):>16}{params:>12,}{macs:>14,}")
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model)
        print(f"{'total':<10}{'':>16}{params:>12,}{macs:>14,}")
        totals[name] = (params, macs)
    (tp, tm), (sp, sm) = totals["teacher"], totals["student"]
    print(f"\nteacher/student: {tp / sp:.1f}x parameters, {tm / sm:.1f}x MACs per image")


if __name__ == "__main__":
    main()
