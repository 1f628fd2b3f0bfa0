import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from kd.checkpoints import save_checkpoint
from models import (
    StudentNet,
    TeacherNet,
    build_model,
    count_macs,
    load_model,
    model_spec,
    relu_before_pool,
)

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


def layers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("cls, n_convs", [(TeacherNet, 7), (StudentNet, 2)])
def test_architecture_rules(cls, n_convs):
    model = cls()
    convs = layers(model, nn.Conv2d)
    assert len(convs) == n_convs
    assert len(layers(model, POOLS)) == 1 and len(layers(model, nn.MaxPool2d)) == 1
    linears = layers(model, nn.Linear)
    assert [m.out_features for m in linears] == [256, 10]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_relu_after_the_pool_trains_exactly_like_conv_bn_relu_pool(name):
    """models.pool_relu moves the ReLU of the conv before the pool after it: a few SGD steps
    must give bit-identical weights to the usual order, whose checkpoints keep loading."""
    torch.manual_seed(0)
    model = build_model(name)
    usual = relu_before_pool(copy.deepcopy(model))
    i = next(i for i, layer in enumerate(usual.features) if isinstance(layer, nn.MaxPool2d))
    assert isinstance(usual.features[i - 1][-1], nn.ReLU)  # conv, BN, ReLU, then the pool
    assert usual.state_dict().keys() == model.state_dict().keys()
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(16, 3, 32, 32, generator=generator),
                torch.randint(0, 10, (16,), generator=generator)) for _ in range(3)]
    for net in (model, usual):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for images, labels in batches:
            loss = nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for key, value in usual.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_teacher_first_conv_has_6_filters():
    assert layers(TeacherNet(), nn.Conv2d)[0].out_channels == 6


@pytest.mark.parametrize("cls", [TeacherNet, StudentNet])
def test_he_initialisation(cls):
    torch.manual_seed(0)
    for m in layers(cls(), (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        expected = math.sqrt(2.0 / fan_in)  # Kaiming normal, ReLU gain, fan_in mode
        w = m.weight.detach()
        # The sample std of n draws is within a few / sqrt(2n) of the true one.
        assert abs(w.std().item() / expected - 1) < 4 / math.sqrt(2 * w.numel()) + 0.01
        assert abs(w.mean().item()) < 4 * expected / math.sqrt(w.numel())
        assert m.bias is None or torch.all(m.bias == 0)


def test_student_is_much_cheaper_and_teacher_bigger():
    teacher, student = TeacherNet(), StudentNet()
    assert count_macs(student) * 4 <= count_macs(teacher)
    def params(model):
        return sum(p.numel() for p in model.parameters())
    assert params(teacher) > params(student)


def test_count_macs_matches_hand_count():
    student = StudentNet(widths=(8, 16))
    # conv 3->8 at 32x32, conv 8->16 stride 2 at 8x8, FC 16*64->256, FC 256->10
    expected = 8 * 27 * 32 * 32 + 16 * 72 * 8 * 8 + 16 * 64 * 256 + 256 * 10
    assert count_macs(student) == expected


def test_models_normalise_inside():
    model = StudentNet().eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert {"mean", "std"} <= set(model.state_dict())
    # the forward uses them: the network on images normalised by hand, mean 0 and std 1
    images = torch.rand(4, 3, 32, 32)
    by_hand = (images - model.mean) / model.std
    with torch.no_grad():
        normalised = model(images)
        model.mean.zero_()
        model.std.fill_(1.0)
        assert torch.allclose(model(by_hand), normalised, atol=1e-5)


def test_load_model_rebuilds_from_the_file_alone(tmp_path):
    model = build_model("student", {"widths": [8, 16]}).eval()
    path = tmp_path / "s.pt"
    save_checkpoint({"model": model_spec(model), "model_state": model.state_dict()}, path)
    loaded = load_model(path)
    assert isinstance(loaded, StudentNet) and not loaded.training
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_models_py_prints_tables():
    out = subprocess.run([sys.executable, "models.py"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "teacher/student" in out and out.count("total") == 2
    assert f"{count_macs(TeacherNet()):,}" in out


@pytest.mark.parametrize("cls, widths", [(TeacherNet, (8, 8)), (TeacherNet, (0, 8, 8, 8)),
                                         (StudentNet, (8, -1)), (StudentNet, (8, 8, 8))])
def test_bad_widths_are_rejected(cls, widths):
    with pytest.raises(ValueError, match="positive integer widths"):
        cls(widths)
