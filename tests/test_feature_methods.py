"""The feature methods (fitnet, at, reviewkd, crd) and function matching (--mixup, --cutmix)
in methods.py: resumed runs equal uninterrupted ones, the teacher gets no gradient, the
methods' own parameters train, and the mixed batch is what both networks see."""
import pytest
import torch
from torch import nn

import methods
from conftest import run_in_process, run_script
from kd.checkpoints import load_checkpoint
from models import build_model, load_model

FEATURE_METHODS = ("fitnet", "at", "reviewkd", "crd")


def common(teacher_checkpoint, image_folder, folder):
    # 2 optimizer steps an epoch and no test pass: these runs check state, not accuracy.
    return ["--teacher", teacher_checkpoint, "--data-root", image_folder, "--plots-dir",
            folder, "--batch-size", "16", "--train-subset", "32", "--ema-decay", "0",
            "--skip-test"]


@pytest.mark.parametrize("flags", [["--loss", "fitnet", "--mixup"], ["--loss", "crd"],
                                   ["--loss", "reviewkd", "--reviewkd-mid-channels", "8"],
                                   ["--loss", "at", "--cutmix"],
                                   ["--loss", "fitnet", "--cutmix", "--mix-per-batch"]],
                         ids=lambda f: "".join(f[1:]))
def test_a_resumed_run_equals_an_uninterrupted_one(flags, teacher_checkpoint, image_folder,
                                                   tmp_path):
    """Interrupted mid-epoch 2 and resumed: the student, the method's modules and buffers
    (the mixing generator, CRD's memory, the warm-up's step) end as in an uninterrupted run;
    the method's parameters moved from their start (the optimizer has them; AT has none:
    its only state with --cutmix is the mixing draws'); the student's checkpoint loads
    alone. In process: a real signal's interruption and resume have their own tests
    (test_reliability.py, test_ema.py)."""
    flags = [*flags, "--epochs", "2", *common(teacher_checkpoint, image_folder, tmp_path)]
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    run_in_process("train_student.py", *flags, "--out", full)
    with pytest.raises(KeyboardInterrupt):  # checks: steps 1 and 2, epoch 1's end, step 3
        run_in_process("train_student.py", *flags, "--out", cut, interrupt_at=4)
    assert load_checkpoint(cut)["epoch"] == 1
    run_in_process("train_student.py", *flags, "--out", cut, "--resume")
    a, b = load_checkpoint(full), load_checkpoint(cut)
    assert a["epoch"] == b["epoch"] == 2
    for part in ("model_state", "method_state"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():  # CRD's extra state: its seed and draws so far
            same = torch.equal(value, b[part][key]) if torch.is_tensor(value) else \
                value == b[part][key]
            assert same, (part, key)
    start = methods.build(a["config"], load_model(teacher_checkpoint, kind="teacher"), None,
                          torch.zeros(32, dtype=torch.long))
    params = dict(start.named_parameters())
    assert all(not torch.equal(a["method_state"][k], p) for k, p in params.items())
    if a["config"]["loss"] == "at":
        assert not params and list(a["method_state"]) == ["mix_rng"]
    elif a["config"]["loss"] == "reviewkd":  # the flag sets the fused maps' width
        assert [p.shape[0] for k, p in params.items() if k.endswith("reduce.0.weight")] == [8] * 3
    else:
        assert params
    student = load_model(full, kind="student")
    assert student.state_dict().keys() == a["model_state"].keys()


@pytest.mark.parametrize("loss", FEATURE_METHODS)
def test_no_gradient_reaches_the_teacher_and_its_batchnorm_stays_put(loss):
    """The teacher left trainable: after a backward pass it still has no gradient, while the
    student and every parameter of the method have one; the teacher's weights and BatchNorm
    buffers (running statistics, batch count) are untouched and it stays in eval mode, the
    method in train mode or not (test_student.py checks the same for the logit methods)."""
    torch.manual_seed(0)
    student, teacher = build_model("student"), build_model("teacher").eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = methods.build({"loss": loss}, teacher, None, torch.arange(40) % 10).train()
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8)
    _, parts, _ = method(student, images, labels, torch.arange(8))
    parts["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in [*student.parameters(), *method.parameters()])
    assert not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("loss", FEATURE_METHODS)
def test_every_gradient_in_the_student_stays_channels_last(loss):
    """The student and the teacher train channels_last; a loss that hands back an NCHW
    gradient sends the backward of the student and of the method's own modules (ReviewKD's
    fusion) down oneDNN's slow path (AT's step once cost 2x a KD step). Seen failing for at
    and reviewkd before attention_map's and hcl_loss's layout fixes."""
    torch.manual_seed(0)
    student = build_model("student").to(memory_format=torch.channels_last)
    teacher = build_model("teacher").to(memory_format=torch.channels_last).eval()
    method = methods.build({"loss": loss}, teacher, None, torch.arange(40) % 10)
    layouts = []

    def check_gradient(module, inputs, output):
        output.register_hook(lambda grad: layouts.append(
            (type(module).__name__, grad.is_contiguous(memory_format=torch.channels_last))))
    for module in [*student.modules(), *method.modules()]:
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and module not in teacher.modules():
            module.register_forward_hook(check_gradient)
    images = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    _, parts, _ = method(student, images, torch.arange(8), torch.arange(8))
    parts["loss"].backward()
    assert layouts and all(channels_last for _, channels_last in layouts), layouts


class Recorder(nn.Module):
    """A network that keeps the images it is given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen, self.arch_args = net, [], net.arch_args

    def forward(self, images, features=False):
        self.seen.append(images.clone())
        return self.net(images, features)


@pytest.mark.parametrize("config", [{"loss": "kd", "mixup": True},
                                    {"loss": "fitnet", "cutmix": True}], ids=str)
def test_the_student_and_the_teacher_see_the_same_mixed_batch(config):
    torch.manual_seed(0)
    student, teacher = Recorder(build_model("student")), Recorder(build_model("teacher").eval())
    method = methods.build(config, teacher, shared_logits=object())
    assert method.shared is None  # stored logits are of unmixed images
    images = torch.rand(8, 3, 32, 32)
    method(student, images, torch.arange(8), torch.arange(8))
    (s,), (t,) = student.seen, teacher.seen
    assert torch.equal(s, t) and not torch.equal(s, images)


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_a_mixed_images_training_accuracy_is_scored_against_its_larger_share(mixing):
    """The training accuracy compared the logits of mixed images with the images' own
    labels, of which a per-image mix may hold little: each is scored against the class
    with the larger share of its target."""
    torch.manual_seed(0)
    method = methods.build({"loss": "kd", "seed": 1, mixing: True}, build_model("teacher").eval())
    state = method.mix_generator.get_state()
    labels = torch.arange(10)
    _, _, scored = method(build_model("student"), torch.rand(10, 3, 32, 32), labels, labels)
    method.mix_generator.set_state(state)
    _, targets = method.mix(torch.rand(10, 3, 32, 32), labels)
    assert torch.equal(scored, targets.argmax(1))
    assert not torch.equal(scored, labels)  # some images hold less than half of their own
    assert torch.equal(methods.build({"loss": "ce"})(build_model("student"),
                                                     torch.rand(4, 3, 32, 32),
                                                     labels[:4], labels[:4])[2], labels[:4])


def test_a_ratio_of_one_leaves_the_batch_unchanged():
    images, targets = torch.rand(6, 3, 32, 32), torch.eye(10)[:6]
    ones, partner = torch.ones(6), torch.arange(6).roll(1)
    for mixed in (methods.mixup_batch(images, targets, ones, partner),
                  methods.cutmix_batch(images, targets, ones, partner, torch.rand(6, 2))):
        assert torch.equal(mixed[0], images) and torch.equal(mixed[1], targets)


def test_cutmix_weighs_each_label_by_the_area_kept():
    """Image i is filled with the value i, so each pixel tells which image it came from; the
    boxes include ones cut at the edges (centres 0 and 1), where the kept area is not the
    drawn ratio."""
    n = 6
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32)
    ratio = torch.tensor([0.9, 0.5, 0.2, 0.0, 0.37, 0.75])
    centre = torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.5, 0.5], [0.3, 0.9], [0.1, 1.0],
                           [0.6, 0.2]])
    partner = torch.arange(n).roll(1)
    mixed, targets = methods.cutmix_batch(images, torch.eye(10)[:n], ratio, partner, centre)
    kept = (mixed[:, 0] == images[:, 0]).flatten(1).float().mean(1)
    assert not torch.allclose(kept, ratio)  # cut at the edges
    assert torch.allclose(targets[torch.arange(n), torch.arange(n)], kept)
    assert torch.allclose(targets[torch.arange(n), partner], 1 - kept)
    assert torch.equal(mixed[:, 0] == images[:, 0], mixed[:, 1] == images[:, 1])


def test_per_batch_mixup_is_big_visions_draw():
    """--mix-per-batch: one ratio for the batch, the larger share each image's own, the
    partner the image before it (big_vision's mixup: Dirichlet(1, 1) sorted, the batch
    rolled); over many batches the ratio is uniform on [0.5, 1]. Image i is filled with the
    value i, so a mixed pixel tells the ratio and the partner."""
    n = 6
    method = methods.build({"loss": "kd+ce", "seed": 3, "mixup": True, "mix_per_batch": True},
                           build_model("teacher").eval())
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32)
    previous = torch.arange(n).roll(1)
    ratios = []
    for _ in range(400):
        mixed, targets = method.mix(images, torch.arange(n))
        ratio = targets[0, 0]
        ratios.append(float(ratio))
        assert torch.allclose(mixed, (ratio * images + (1 - ratio) * images[previous]))
        assert torch.allclose(targets[torch.arange(n), torch.arange(n)], ratio.expand(n))
        assert torch.allclose(targets[torch.arange(n), previous], 1 - ratio.expand(n))
    ratios = torch.tensor(ratios)
    assert 0.5 <= ratios.min() < 0.52 and 0.98 < ratios.max() <= 1
    assert abs(ratios.mean() - 0.75) < 0.02  # the uniform's mean on [0.5, 1], sd 0.0072


def test_per_batch_cutmix_pastes_one_box_into_every_image():
    n = 6
    method = methods.build({"loss": "kd", "seed": 3, "cutmix": True, "mix_per_batch": True},
                           build_model("teacher").eval())
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32)
    for _ in range(20):
        mixed, targets = method.mix(images, torch.arange(n))
        kept = mixed[:, 0] == images[:, 0]
        assert (kept == kept[0]).all()  # one box
        assert torch.equal(mixed[:, 0][~kept], images[:, 0].roll(1, 0)[~kept])
        assert kept[0].float().mean() >= 0.5 - 1 / 32  # the larger share, up to rounding
        assert torch.allclose(targets[torch.arange(n), torch.arange(n)],
                              kept.flatten(1).float().mean(1))


def test_mixing_is_refused_where_it_does_not_fit(teacher_checkpoint, image_folder, tmp_path):
    """DKD needs one target class: one line and exit 2. --mixup and --cutmix exclude each
    other, and --mix-per-batch needs one of them (the same check, in process)."""
    proc = run_script("train_student.py", "--loss", "dkd", "--mixup", "--dry-run", "--out",
                      tmp_path / "x.pt", *common(teacher_checkpoint, image_folder, tmp_path),
                      check=False)
    assert proc.returncode == 2 and "not dkd" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    both = {"loss": "kd", "mixup": True, "cutmix": True}
    assert methods.check_flags(both) == ["--mixup and --cutmix exclude each other; choose one"]
    assert methods.check_flags({**both, "cutmix": False}) == []
    alone = {"loss": "kd", "mix_per_batch": True}
    assert methods.check_flags(alone) == [
        "--mix-per-batch says how --mixup or --cutmix draw; give one of them"]
    assert methods.check_flags({**alone, "cutmix": True}) == []
    takers = "kd+ce, kd, dist, fitnet, at, reviewkd"
    assert methods.check_flags({**alone, "loss": "ce"}) == [
        f"--mix-per-batch goes with --loss {takers}, not ce"]
    assert methods.ignored_flags({**alone, "loss": "ce"}) == []  # refused, not a note


def test_a_method_that_mixes_but_does_not_take_per_batch_refuses_it(monkeypatch):
    """A method declaring --mixup and --cutmix alone (one kept outside the repo, or from
    before --mix-per-batch) would mix per image under it: refused, not ignored."""
    class PerImage(methods.Method):
        name = "per-image"
        flags = methods.MIXING
    monkeypatch.setitem(methods.METHODS, "per-image", PerImage)
    config = {"loss": "per-image", "mixup": True, "mix_per_batch": True}
    assert methods.check_flags(config) == [
        "--mix-per-batch goes with --loss kd+ce, kd, dist, fitnet, at, reviewkd, not per-image"]
    assert methods.check_flags({**config, "mix_per_batch": False}) == []


@pytest.mark.parametrize("loss", ["fitnet", "reviewkd"])
def test_mixing_leaves_the_methods_own_modules_as_they_start_without_it(loss):
    """With mixing, a method compared by seed with itself unmixed starts from the same
    regressor or fusion weights, so the comparison measures the mixing alone."""
    teacher = build_model("teacher").eval()
    plain = methods.build({"loss": loss, "seed": 3}, teacher)
    mixed = methods.build({"loss": loss, "seed": 3, "mixup": True}, teacher)
    mixed_state = mixed.state_dict()
    assert set(mixed_state) - set(plain.state_dict()) == {"mix_rng"}
    for name, weights in plain.state_dict().items():
        assert torch.equal(weights, mixed_state[name]), name


@pytest.mark.parametrize("per_batch", [False, True])
def test_the_mixing_state_stays_on_the_cpu_and_travels_in_the_state_dict(per_batch):
    """No buffer holds it (a buffer follows the method to the GPU, where reading it each step
    waits for the device); its state dict does, and loading it continues the draws."""
    teacher = build_model("teacher").eval()
    method = methods.build({"loss": "kd", "seed": 3, "cutmix": True,
                            "mix_per_batch": per_batch}, teacher)
    assert list(method.buffers()) == []
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8)
    method.mix(images, labels)
    saved = method.state_dict()
    following = method.mix(images, labels)
    again = methods.build({"loss": "kd", "seed": 4, "cutmix": True,
                           "mix_per_batch": per_batch}, teacher)
    again.load_state_dict(saved)
    for a, b in zip(following, again.mix(images, labels)):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "mix_rng"'):
        again.load_state_dict({})
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "mix_rng"'):
        methods.build({"loss": "kd"}, teacher).load_state_dict(saved)
    holder, other = (nn.ModuleDict({"method": m}) for m in (method, again))  # held by a module
    assert torch.equal(holder.state_dict()["method.mix_rng"], method.mix_generator.get_state())
    method.mix(images, labels)
    other.load_state_dict(holder.state_dict())
    for a, b in zip(method.mix(images, labels), again.mix(images, labels)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_the_per_image_draws_keep_their_order(mixing):
    """Recorded runs stay reproducible: per image, a batch draws its ratios, then its
    partners, then (CutMix) the boxes' centres, from the mixing generator in that order."""
    n = 6
    method = methods.build({"loss": "kd", "seed": 3, mixing: True}, build_model("teacher"))
    generator = torch.Generator().manual_seed(method.mix_generator.initial_seed())
    ratio, partner = torch.rand(n, generator=generator), torch.randperm(n, generator=generator)
    centre = torch.rand(n, 2, generator=generator)
    images, targets = torch.rand(n, 3, 32, 32), torch.eye(10)[:n]
    expected = (methods.mixup_batch(images, targets, ratio, partner) if mixing == "mixup" else
                methods.cutmix_batch(images, targets, ratio, partner, centre))
    for got, want in zip(method.mix(images, torch.arange(n)), expected):
        assert torch.equal(got, want)


def test_the_mixing_stream_is_the_seeds_first_draw():
    """Recorded function-matching runs stay reproducible: the mixing generator's seed is the
    first draw of the RNG seeded with the run's seed, as when those runs were made."""
    torch.manual_seed(3)
    first = int(torch.randint(2 ** 62, ()))
    method = methods.build({"loss": "kd", "seed": 3, "mixup": True}, build_model("teacher"))
    assert method.mix_generator.initial_seed() == first
