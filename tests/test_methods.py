"""methods.py: what the registry derives (the command line, recipes, old checkpoints' values,
table order, the report's comparisons), and a method registered from outside the repo taken
through every script with no other edit."""
import argparse
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

import methods
from conftest import ROOT, run_in_process, run_script
from kd.checkpoints import load_checkpoint
from kd.results import recipe_labels
from models import build_model


def test_the_derived_facts_are_the_ones_once_written_by_hand():
    """What results.UNUSED_BY, results.ADDED_RECIPE_KEYS, results.VARIANT_ORDER and
    report.STUDENT_PAIRS listed before methods were classes."""
    dkd, dist = ("dkd_alpha", "dkd_beta", "dkd_warmup"), ("dist_beta", "dist_gamma")
    # the feature methods' flags and function matching's, added with issue 25
    feature = ("fitnet_weight", "at_weight", "reviewkd_weight", "reviewkd_warmup",
               "reviewkd_mid_channels", "crd_weight", "crd_k", "crd_temperature")
    mixing = ("mixup", "cutmix", "mix_per_batch")
    weights = ("kd_weight", "ce_weight")  # added with issue 26
    unused_by = {"ce": ("temperature", "alpha", "logit_standardize") + dkd + dist + mixing
                 + weights,
                 "kd": ("alpha", "ce_weight") + dkd + dist, "kd+ce": dkd + dist,
                 "dkd": ("alpha",) + dist + mixing + weights,
                 "dist": ("alpha", "logit_standardize") + dkd + weights,
                 "crd": ("temperature", "alpha", "logit_standardize") + dkd + dist + mixing
                 + feature[:5] + weights}
    for loss, unused in unused_by.items():
        if loss != "crd":
            unused += feature
        if loss in ("fitnet", "at", "reviewkd"):
            unused += weights
        assert sorted(methods.unused_flags(loss)) == sorted(unused), loss
    assert methods.flags_before() == {"logit_standardize": False, "dkd_alpha": 1.0,
                                      "dkd_beta": 8.0, "dkd_warmup": 1.0, "dist_beta": 1.0,
                                      "dist_gamma": 1.0, "mixup": False, "cutmix": False,
                                      "mix_per_batch": False,
                                      "kd_weight": None, "ce_weight": None,
                                      "reviewkd_mid_channels": 64}
    assert methods.variant_order() == [
        "kd+ce", "kd", "dkd", "dist", "fitnet", "at", "reviewkd", "crd", "kd+ce+ls",
        "kd+ce+mixup", "kd+ce+cutmix", "kd+ls", "kd+mixup", "kd+cutmix", "dkd+ls", "dist+mixup",
        "dist+cutmix", "fitnet+mixup", "fitnet+cutmix", "at+mixup", "at+cutmix",
        "reviewkd+mixup", "reviewkd+cutmix", "ce"]
    mixed = [(f"{m}+{s}", m) for m in ("kd+ce", "kd", "dist", "fitnet", "at", "reviewkd")
             for s in mixing[:2]]
    assert sorted(methods.comparisons()) == sorted([
        ("kd+ce", "ce"), ("kd", "ce"), ("kd", "kd+ce"), ("dkd", "kd+ce"), ("dist", "kd+ce"),
        ("fitnet", "kd+ce"), ("at", "kd+ce"), ("reviewkd", "kd+ce"), ("crd", "kd+ce"),
        ("kd+ce+ls", "kd+ce"), ("kd+ls", "kd"), ("dkd+ls", "dkd"), *mixed])
    assert methods.unused_flags("teacher") == ()  # not a method: nothing to ignore


def test_flags_are_declared_once_and_checked():
    parser = argparse.ArgumentParser()
    methods.add_flags(parser)
    args = parser.parse_args([])
    assert (args.loss, args.temperature, args.alpha, args.dkd_beta) == ("kd+ce", 4.0, 0.5, 0.5)
    assert methods.check_flags(vars(args)) == []
    bad = {**vars(args), "loss": "dist", "temperature": 0.0, "dkd_beta": -1.0,
           "logit_standardize": True}
    assert methods.check_flags(bad) == ["--temperature must be > 0 and finite, got 0.0",
                                        "--dkd-beta must be >= 0 and finite, got -1.0",
                                        "--logit-standardize goes with --loss kd+ce, kd, dkd, "
                                        "not dist"]
    assert methods.check_flags({**vars(args), "temperature": math.inf}) == [
        "--temperature must be > 0 and finite, got inf"]  # softmax of logits / inf: NaN
    assert methods.check_flags({**vars(args), "dkd_beta": math.nan}) == [
        "--dkd-beta must be >= 0 and finite, got nan"]
    clash = type("Clash", (methods.Method,), {
        "name": "clash", "flags": (methods.Flag("temperature", 2.0, "another T"),)})
    with pytest.raises(ValueError, match="share its Flag object"):
        methods.register(clash)
    assert "clash" not in methods.METHODS


def kd_parts(loss, **flags):
    """(loss, its KD term, its CE) of method `loss` on fixed logits."""
    g = torch.Generator().manual_seed(3)
    s, t = 3 * torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    method = methods.build({"loss": loss, **flags}, build_model("teacher"))
    parts = method.loss(methods.Outputs(s), methods.Outputs(t), labels, None)
    return parts["loss"], parts["kd"], parts["ce"]


def test_a_flag_the_method_does_not_use_is_noted_when_set():
    """--loss kd --dkd-beta 2 was accepted and dropped without a word."""
    default = next(f.default for f in methods.all_flags() if f.name == "dkd_beta")
    assert default != 2.0
    assert methods.ignored_flags({"loss": "kd", "dkd_beta": 2.0}) == [
        "note: --loss kd does not use --dkd-beta (used by dkd); it is ignored"]
    assert methods.ignored_flags({"loss": "dkd", "dkd_beta": 2.0}) == []
    assert methods.ignored_flags({"loss": "kd", "dkd_beta": default}) == []
    assert methods.ignored_flags({"loss": "kd"}) == []


def test_kd_and_ce_weights_replace_alpha():
    loss, kd, ce = kd_parts("kd+ce", kd_weight=9.0, ce_weight=0.1)
    assert loss.item() == pytest.approx(9 * kd.item() + 0.1 * ce.item(), rel=1e-6)
    loss, kd, ce = kd_parts("kd+ce", alpha=0.9)  # without them: alpha's mix, bit for bit
    assert torch.equal(loss, 0.9 * kd + (1 - 0.9) * ce)
    assert torch.equal(kd_parts("kd", kd_weight=2.5)[0], 2.5 * kd_parts("kd")[0])
    assert torch.equal(kd_parts("kd")[0], kd_parts("kd")[1])
    parser = argparse.ArgumentParser()
    methods.add_flags(parser)
    given = vars(parser.parse_args(["--kd-weight", "9", "--ce-weight", "0.1"]))
    assert (given["kd_weight"], given["ce_weight"]) == (9.0, 0.1)
    assert methods.check_flags(given) == []
    assert methods.check_flags({**given, "ce_weight": None}) == [
        "--kd-weight and --ce-weight go together (they replace --alpha)"]
    assert methods.check_flags({**given, "alpha": 0.9}) == [
        "--alpha or --kd-weight and --ce-weight, not both"]
    assert methods.check_flags({**given, "kd_weight": -1.0}) == [
        "--kd-weight must be >= 0 and finite, got -1.0"]
    assert methods.check_flags({**given, "loss": "kd", "ce_weight": None}) == []


def test_the_teacher_is_no_part_of_a_method():
    teacher = build_model("teacher").eval().requires_grad_(False)
    method = methods.build({"loss": "kd+ce"}, teacher)
    assert list(method.parameters()) == [] and method.state_dict() == {}
    assert method.teacher is teacher


def test_a_method_sees_each_images_position_and_the_teachers_features():
    seen = {}

    class Probe(methods.Method):
        name, features, shared_logits = "probe", True, False

        def loss(self, student, teacher, labels, positions):
            seen.update(student=student, teacher=teacher, positions=positions)
            return {"loss": student.logits.float().sum()}
    torch.manual_seed(0)
    student, teacher = build_model("student"), build_model("teacher").eval()
    images, positions = torch.rand(4, 3, 32, 32), torch.tensor([7, 3, 9, 0])
    logits, _, _ = Probe({}, teacher)(student, images, torch.zeros(4, dtype=torch.long),
                                      positions)
    assert seen["positions"] is positions
    assert [f.shape[1:] for f in seen["student"].features["blocks"]] == [
        (32, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert seen["teacher"].features["hidden"].shape == (4, 256)
    assert not seen["teacher"].logits.requires_grad
    assert torch.equal(logits, student(images))  # the default call: the same logits


def test_a_method_from_outside_the_repo_goes_through_every_script(
        teacher_checkpoint, image_folder, tmp_path, monkeypatch):
    """tests/toy_method.py, named in $KD_METHODS: --help, a run whose own parameters train
    and are saved with it, its recipe label, evaluate.py and report.py, with no edit
    anywhere else (the feature methods' resume tests, tests/test_feature_methods.py, check
    that a method's state resumes exactly)."""
    monkeypatch.setenv("KD_METHODS", "toy_method")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))
    help_text = run_script("train_student.py", "--help").stdout
    assert "--toy-weight" in help_text and "toy: CE + a projected" in help_text
    common = ["--teacher", teacher_checkpoint, "--data-root", image_folder, "--plots-dir",
              tmp_path, "--batch-size", "16", "--ema-decay", "0", "--dry-run"]
    full = tmp_path / "toy.pt"
    run_script("train_student.py", "--loss", "toy", *common, "--out", full)
    trained = load_checkpoint(full)
    assert set(trained["method_state"]) == {"project.weight", "project.bias"}
    torch.manual_seed(0)  # what methods.build seeds a seed-0 run's method with
    start = torch.nn.Linear(256, 256).weight
    assert not torch.equal(trained["method_state"]["project.weight"], start)  # it trained
    # the method it is compared with, in this process: it needs no $KD_METHODS
    run_in_process("train_student.py", "--loss", "kd+ce", *common, "--out", tmp_path / "kd.pt")
    config = trained["config"]
    assert recipe_labels([("toy", config), ("toy", {**config, "toy_weight": 2.0})]) == [
        "toy (toy_weight=0.5)", "toy (toy_weight=2.0)"]
    plots = tmp_path / "plots"
    run_script("evaluate.py", full, tmp_path / "kd.pt", "--data-root", image_folder,
               "--plots-dir", plots, "--batch-size", "16")
    assert set(pd.read_csv(plots / "results.csv")["variant"]) == {"toy", "kd+ce"}
    subprocess.run([sys.executable, "report.py", "--plots-dir", plots], cwd=ROOT, check=True,
                   capture_output=True)
    assert "toy − kd+ce" in (plots / "report.md").read_text()
