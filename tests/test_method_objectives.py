"""Each method's objective as methods.py wires it: which logits, features, flags and labels
reach which term. The terms themselves are checked against written-out references in
test_losses.py and test_feature_losses.py; here the expected objective is built outside
methods.py (the logit terms from those float64 references, the feature terms from the
networks' features picked by hand), with every flag away from its default, so a swapped
argument, a dropped weight or a wrong layer shows. Seen failing under each mutation named
in a docstring."""
import copy

import pytest
import torch
import torch.nn.functional as F
from test_losses import reference_ce, reference_dist, reference_dkd, reference_kd

import methods
from losses import ContrastMemory, at_loss, hcl_loss, hint_loss, standardize_logits
from models import build_model


def logits_and_labels(seed=3, n=16):
    g = torch.Generator().manual_seed(seed)
    student, teacher = 3 * torch.randn(n, 10, generator=g), 3 * torch.randn(n, 10, generator=g)
    return student, teacher, torch.randint(0, 10, (n,), generator=g)


def logit_parts(config):
    """The parts of a logit method's objective on fixed logits (no warm-up left)."""
    s, t, labels = logits_and_labels()
    method = methods.build(config, build_model("teacher"))
    method.step, method.steps_per_epoch = 10 ** 6, 1
    return method.loss(methods.Outputs(s), methods.Outputs(t), labels, None), (s, t, labels)


def test_kd_and_ce_take_the_students_logits_against_the_teachers():
    """Mutations: kd_only_loss(t, s) (the KL reversed), the temperature or alpha left at
    their defaults, or the CE term given the KD weight."""
    parts, (s, t, labels) = logit_parts({"loss": "kd+ce", "temperature": 2.0, "alpha": 0.3})
    expected = 0.3 * reference_kd(s, t, 2.0) + 0.7 * reference_ce(s, labels)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)
    parts, _ = logit_parts({"loss": "kd+ce", "temperature": 2.0, "kd_weight": 9.0,
                            "ce_weight": 0.1})
    expected = 9.0 * reference_kd(s, t, 2.0) + 0.1 * reference_ce(s, labels)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)
    parts, _ = logit_parts({"loss": "kd", "temperature": 8.0, "kd_weight": 2.5})
    assert parts["loss"].item() == pytest.approx(2.5 * reference_kd(s, t, 8.0), rel=1e-5)
    assert parts["ce"].item() == pytest.approx(reference_ce(s, labels), rel=1e-5)


def test_the_kd_term_trains_the_student():
    """Mutation: kd_only_loss(t, s), whose gradient reaches only the (detached) teacher."""
    s, t, labels = logits_and_labels()
    s.requires_grad_(True)
    method = methods.build({"loss": "kd"}, build_model("teacher"))
    method.loss(methods.Outputs(s), methods.Outputs(t), labels, None)["loss"].backward()
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["kd+ce", "kd", "dkd"])
def test_logit_standardization_z_scores_the_distillation_terms_logits_not_the_ces(loss):
    """Mutations: the flag ignored (Method.standardized returning the raw logits), or the CE
    computed on the standardized logits."""
    config = {"loss": loss, "temperature": 2.0, "logit_standardize": True, "alpha": 0.3,
              "dkd_alpha": 2.0, "dkd_beta": 3.0}
    parts, (s, t, labels) = logit_parts(config)
    zs, zt = standardize_logits(s), standardize_logits(t)
    term = (reference_dkd(zs, zt, labels, 2.0, 2.0, 3.0) if loss == "dkd"
            else reference_kd(zs, zt, 2.0))
    assert term != pytest.approx(reference_kd(s, t, 2.0), rel=1e-2)  # the test can tell
    assert parts["kd"].item() == pytest.approx(term, rel=1e-5)
    assert parts["ce"].item() == pytest.approx(reference_ce(s, labels), rel=1e-5)


def test_dkd_weighs_its_two_terms_by_their_own_flags_after_the_warm_up():
    """Mutations: dkd_alpha and dkd_beta swapped, the temperature left out, the CE weighted."""
    parts, (s, t, labels) = logit_parts({"loss": "dkd", "temperature": 3.0, "dkd_alpha": 2.0,
                                         "dkd_beta": 5.0, "dkd_warmup": 2.0})
    expected = reference_ce(s, labels) + reference_dkd(s, t, labels, 3.0, 2.0, 5.0)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)
    method = methods.build({"loss": "dkd", "dkd_warmup": 2.0}, build_model("teacher"))
    method.set_epoch(0, steps_per_epoch=4)  # the first of 8 warm-up steps: weight 1/8
    loss = method.loss(methods.Outputs(s), methods.Outputs(t), labels, None)["loss"]
    expected = reference_ce(s, labels) + reference_dkd(s, t, labels, 4.0, 1.0, 0.5) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_dist_weighs_its_relations_by_their_own_flags():
    """Mutation: dist_beta and dist_gamma swapped (equal by default, so set apart here)."""
    parts, (s, t, labels) = logit_parts({"loss": "dist", "temperature": 2.0,
                                         "dist_beta": 0.25, "dist_gamma": 2.0})
    expected = reference_ce(s, labels) + reference_dist(s, t, 2.0, 0.25, 2.0)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)


def feature_run(config, n=4, step=10 ** 6, steps_per_epoch=1):
    """(parts of one forward, the method as it was before it, the student's and the
    teacher's features, images, labels, positions) on random images; the networks in eval
    mode, so that a second forward gives the same features. The forward is optimizer step
    `step` (by default long after any warm-up)."""
    torch.manual_seed(0)
    student, teacher = build_model("student").eval(), build_model("teacher").eval()
    images = torch.rand(n, 3, 32, 32)
    labels, positions = torch.arange(n) % 10, torch.arange(n)
    method = methods.build({"seed": 0, **config}, teacher,
                           train_labels=torch.arange(64) % 10)
    method.step, method.steps_per_epoch = step, steps_per_epoch
    before = copy.deepcopy(method)
    _, parts, _ = method(student, images, labels, positions)
    with torch.no_grad():
        _, s_feats = student(images, features=True)
        _, t_feats = teacher(images, features=True)
    return parts, before, s_feats, t_feats, student, images, labels, positions


def ce_of(student, images, labels):
    return F.cross_entropy(student(images).float(), labels).item()


def test_fitnet_regresses_the_students_conv2_onto_the_teachers_conv6():
    """Mutations: another pair of layers, the hint weight dropped."""
    parts, before, s, t, student, images, labels, _ = feature_run(
        {"loss": "fitnet", "fitnet_weight": 7.0})
    hint = hint_loss(before.regressor(s["blocks"][2], t["blocks"][6].shape[-2:]),
                     t["blocks"][6])
    expected = ce_of(student, images, labels) + 7.0 * hint.item()
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_at_matches_the_last_map_of_each_resolution():
    """Mutations: the at weight dropped (`ce + at`), a stage paired with another."""
    parts, _, s, t, student, images, labels, _ = feature_run({"loss": "at", "at_weight": 300.0})
    assert [m.shape[-1] for m in (t["blocks"][1], t["blocks"][4], t["blocks"][6])] == [32, 16, 8]
    at = sum(at_loss(s["blocks"][i], t["blocks"][j]).item() for i, j in ((0, 1), (1, 4), (2, 6)))
    expected = ce_of(student, images, labels) + 300.0 * at
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_matches_the_teachers_maps_before_their_relu():
    """Mutations: the teacher's maps after ReLU (`blocks` for `preact`), the weight dropped,
    the review path's width left at 64 whatever --reviewkd-mid-channels says."""
    parts, before, s, t, student, images, labels, _ = feature_run(
        {"loss": "reviewkd", "reviewkd_weight": 3.0, "reviewkd_mid_channels": 32})
    assert [stage.reduce[0].out_channels for stage in before.fusion.stages] == [32] * 3
    assert t["preact"][1] is None  # conv2 has no ReLU of its own: its block is its output
    targets = [t["blocks"][1], t["preact"][4], t["preact"][6]]
    assert not torch.equal(t["preact"][6], t["blocks"][6])  # the test can tell them apart
    hcl = hcl_loss(before.fusion([s["blocks"][0], s["blocks"][1], s["blocks"][2]]), targets)
    expected = ce_of(student, images, labels) + 3.0 * hcl.item()
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("step, weight", [(0, 1 / 8), (5, 6 / 8), (7, 1.0), (100, 1.0)])
def test_reviewkd_warms_its_term_up_over_its_own_flags_epochs(step, weight):
    """--reviewkd-warmup 2 (default 1) at 4 steps an epoch: the term's weight rises by 1/8 a
    step, from 1/8 at the first step to 1 at the eighth, and stays there. Mutations: the
    warm-up factor dropped, the warm-up's length left at its default whatever the flag."""
    parts, _, _, _, student, images, labels, _ = feature_run(
        {"loss": "reviewkd", "reviewkd_weight": 3.0, "reviewkd_warmup": 2.0},
        step=step, steps_per_epoch=4)
    hcl = parts["kd"].item()
    assert hcl > 0.01  # a term large enough that its weight shows
    expected = ce_of(student, images, labels) + weight * 3.0 * hcl
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_crd_contrasts_the_hidden_layers_embeddings_at_each_images_position():
    """Mutations: the weight dropped, the positions not passed, the student's hidden layer
    embedded by the teacher's head, the temperature left at 0.07 whatever --crd-temperature
    says (the expected term is a memory built here, at the flag's temperature, holding the
    method's banks)."""
    parts, before, s, t, student, images, labels, positions = feature_run(
        {"loss": "crd", "crd_weight": 0.3, "crd_k": 8, "crd_temperature": 0.2})
    embeds = before.embed_s(s["hidden"]), before.embed_t(t["hidden"])

    def contrast(temperature):
        memory = ContrastMemory(torch.arange(64) % 10, 8, temperature=temperature,
                                momentum=0.5)
        memory.load_state_dict(before.memory.state_dict())  # the banks, seed and draws
        return memory(*embeds, positions).item()
    crd = contrast(0.2)
    assert crd != pytest.approx(contrast(0.07), rel=1e-3)  # the test can tell
    expected = ce_of(student, images, labels) + 0.3 * crd
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_function_matching_trains_on_the_mixed_batch_and_its_mixed_labels():
    """Mutations: the CE on the hard labels (mix returning `labels`), the teacher on the
    unmixed images."""
    parts, before, _, _, student, images, labels, _ = feature_run(
        {"loss": "kd+ce", "mixup": True, "temperature": 2.0, "alpha": 0.3}, n=8)
    mixed, targets = before.mix(images, labels)
    assert not torch.equal(mixed, images)
    two = targets.gt(0).sum(1)
    assert ((two == 2) | (two == 1)).all() and (two == 2).any()
    assert torch.allclose(targets.sum(1), torch.ones(8))
    with torch.no_grad():
        s_logits, t_logits = student(mixed), before.teacher(mixed)
    ce = -(targets * F.log_softmax(s_logits.double(), 1)).sum(1).mean().item()
    expected = 0.3 * reference_kd(s_logits, t_logits, 2.0) + 0.7 * ce
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)
