"""experiments/length_study.py: the length table (mean ± std over seeds per method and
length, raw weights of student runs only) and its figure, from evaluate.py's columns."""
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT

pytest.importorskip("scipy")  # report.py's statistics, which length_study.py uses
pytest.importorskip("statsmodels")
sys.path.insert(0, str(ROOT / "experiments"))

from length_study import (  # noqa: E402
    beside,
    best_recipe,
    comparisons,
    ema_comparisons,
    families,
    gap_changes,
    leave_out,
    length_comparisons,
    length_table,
    one_label_per_recipe,
    setting_comparisons,
    short_machine_names,
    student_runs,
    teachers_by_seed,
)

from kd.cli import UserError  # noqa: E402


def results():
    rows = []
    for seed, test in enumerate((79.0, 80.0, 81.0)):
        run = f"student_kd_seed{seed}"
        rows.append((run, "raw", "kd (epochs=12)", seed, 12, 82.0, 79.5, test))
        rows.append((run, "ema", "kd EMA (epochs=12)", seed, 12, 0, 0, 0))
    rows.append(("student_kd_e36_seed0", "raw", "kd (epochs=36)", 0, 36, 87.0, 82.0, 83.0))
    rows.append(("student_ce_e36_seed0", "raw", "ce (epochs=36)", 0, 36, 88.0, 80.0, 80.5))
    rows.append(("teacher", "raw", "teacher", 0, 40, 97.0, 88.0, 88.0))
    return pd.DataFrame(rows, columns=["run", "weights", "variant", "seed", "epochs",
                                       "train_acc", "val_acc", "test_acc"])


def test_each_method_and_length_is_one_row_over_its_seeds():
    table = length_table(results()).set_index(["method", "epochs"])
    assert list(table.index) == [("ce", 36), ("kd", 12), ("kd", 36)]  # no teacher, no EMA
    assert table.loc[("kd", 12), "seeds"] == 3
    assert table.loc[("kd", 12), "test (%)"] == "80.00 ± 1.00"
    assert table.loc[("kd", 36), "training accuracy, clean (%)"] == "87.00"  # one seed
    assert "minutes per run" not in table  # the runs may come from several machines


def test_the_script_prints_the_table_and_draws_the_figure(tmp_path):
    results().to_csv(tmp_path / "results.csv", index=False)
    figure = tmp_path / "length.png"
    proc = subprocess.run([sys.executable, "experiments/length_study.py",
                           tmp_path / "results.csv", "--figure", figure],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    rows = [[cell.strip() for cell in line.split("|")[1:-1]]
            for line in proc.stdout.split("\n\n")[0].splitlines()]
    assert rows[0] == ["method", "epochs", "seeds", "training accuracy, clean (%)",
                       "validation (%)", "test (%)"]
    assert ["kd", "12", "3", "82.00 ± 0.00", "79.50 ± 0.00", "80.00 ± 1.00"] in rows
    assert figure.stat().st_size > 10_000


def test_the_printed_differences_keep_their_sign_and_digits(tmp_path):
    rows = []
    for seed, (ce, kd) in enumerate(((80.0, 81.4), (80.5, 82.0), (81.0, 82.6))):
        for method, test in (("ce", ce), ("kd", kd)):
            rows.append((f"student_{method}_seed{seed}", "raw", method, seed, 12, 85.0, 80.0,
                         test))
    pd.DataFrame(rows, columns=["run", "weights", "variant", "seed", "epochs", "train_acc",
                                "val_acc", "test_acc"]).to_csv(tmp_path / "r.csv", index=False)
    proc = subprocess.run([sys.executable, "experiments/length_study.py", tmp_path / "r.csv",
                           "--figure", tmp_path / "length.png"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| kd − ce"))
    assert "| +1.50 " in row  # tabulate's number parsing printed "1.5"


def test_a_table_without_its_columns_is_refused_in_one_line(tmp_path):
    results().drop(columns=["train_acc"]).to_csv(tmp_path / "results.csv", index=False)
    proc = subprocess.run([sys.executable, "experiments/length_study.py",
                           tmp_path / "results.csv", "--figure", tmp_path / "x.png"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "train_acc" in proc.stderr


@pytest.mark.parametrize("content, says", [
    (b"", "No columns to parse"), (b"PK\x03\x04\x80\xff binary", "codec can't decode"),
    (None, "cannot read"), ("no seed", "no column seed")])
def test_a_file_that_is_no_table_is_refused_in_one_line(tmp_path, content, says):
    path = tmp_path / "results.csv"
    if content == "no seed":
        results().drop(columns=["seed"]).to_csv(path, index=False)
    elif content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, "experiments/length_study.py", path, "--figure",
                           tmp_path / "x.png"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr


def test_methods_are_compared_with_the_student_alone_paired_by_seed():
    frame = results()
    ce = [(f"student_ce_seed{s}", "raw", "ce (epochs=12)", s, 12, 80.0, 76.0, 76.0 + s * 0.9)
          for s in range(3)]
    frame = pd.concat([frame, pd.DataFrame(ce, columns=frame.columns)], ignore_index=True)
    family = comparisons(frame, 12)
    assert list(family["comparison"]) == ["kd − ce"]
    assert family["runs"][0] == "3 pairs by seed"
    assert family["difference (points)"][0] == "+3.10"  # (3 + 3.1 + 3.2) / 3


def test_each_runs_ema_is_compared_with_its_raw_weights_paired_by_run():
    frame = results()
    gains = (0.1, 0.3, 0.2)
    ema = frame["weights"] == "ema"
    frame.loc[ema, "test_acc"] = [79.0 + 0.1, 80.0 + 0.3, 81.0 + 0.2]  # seeds 0, 1, 2
    frame = pd.concat([frame, frame[ema].assign(  # a row of the teacher's EMA: left out
        run="teacher", variant="teacher EMA", seed=0, epochs=40, test_acc=50.0)])
    table = ema_comparisons(frame)
    assert list(table["comparison"]) == ["kd, 12 epochs: EMA − raw"]  # 36: one seed, no test
    assert table["runs"][0] == "3 pairs by run"
    assert table["difference (points)"][0] == f"{sum(gains) / 3:+.2f}"


def test_machines_that_share_a_short_name_keep_their_whole_names():
    names = short_machine_names(pd.Series(["AMD EPYC (2 CPUs)", "AMD EPYC (4 CPUs)",
                                           "Intel(R) Xeon(R) Processor (2 CPUs, AMX)", None]))
    assert names == {"AMD EPYC (2 CPUs)": "AMD EPYC (2 CPUs)",
                     "AMD EPYC (4 CPUs)": "AMD EPYC (4 CPUs)",
                     "Intel(R) Xeon(R) Processor (2 CPUs, AMX)": "Intel Xeon Processor"}


def test_several_tables_read_as_one_say_where_each_row_ran(tmp_path):
    """Runs of one study from two machines (a lent GPU's, a CPU's): one row per method and
    length over both, saying which seeds ran where (by the machine's short name, its whole
    name once below the table); a run given twice counts once, and one whose rows disagree
    between the tables is refused in one line."""
    frame = results().assign(machine="NVIDIA H200", precision="bf16")
    gpu, cpu = frame, frame[frame["run"].str.startswith("student_kd_seed")].copy()
    cpu["run"] = cpu["run"].str.replace("kd_seed", "kd_e36_seed")
    cpu = cpu.assign(epochs=36, variant=cpu["variant"].str.replace("12", "36"),
                     machine="AMD EPYC (2 CPUs, bf16 units: AVX512_BF16)", precision="fp32")
    cpu = cpu[cpu["seed"] > 0]
    gpu.to_csv(tmp_path / "gpu.csv", index=False)
    cpu = pd.concat([cpu, gpu.iloc[:2]])  # seed 0 again, and as evaluate.py names runs:
    cpu.insert(0, "checkpoint", "checkpoints/" + cpu.pop("run") + ".pt")
    cpu.to_csv(tmp_path / "cpu.csv", index=False)
    proc = subprocess.run([sys.executable, "experiments/length_study.py", tmp_path / "gpu.csv",
                           tmp_path / "cpu.csv", "--figure", tmp_path / "l.png"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    cells = [[cell.strip() for cell in line.split("|")[1:-1]]
             for line in proc.stdout.split("\n\n")[0].splitlines() if line.startswith("| kd ")]
    ran_on = {tuple(row[1:3]): row[-1] for row in cells}  # (epochs, seeds): where
    assert ran_on == {("12", "3"): "NVIDIA H200 bf16: seeds 0, 1, 2",
                      ("36", "3"): "AMD EPYC fp32: seeds 1, 2; NVIDIA H200 bf16: seed 0"}
    assert ("The machines in full: AMD EPYC: AMD EPYC (2 CPUs, bf16 units: AVX512_BF16); "
            "NVIDIA H200: NVIDIA H200.") in proc.stdout

    gpu.assign(test_acc=gpu["test_acc"] + 0.01).to_csv(tmp_path / "other.csv", index=False)
    proc = subprocess.run([sys.executable, "experiments/length_study.py", tmp_path / "gpu.csv",
                           tmp_path / "other.csv", "--figure", tmp_path / "l.png"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0
    assert "listed twice in the tables, with different accuracies" in proc.stderr


def test_a_method_at_a_longer_length_is_compared_with_its_shortest_paired_by_seed():
    frame = results()
    assert length_comparisons(frame) is None  # kd at 36 epochs: one seed
    longer = [(f"student_kd_e36_seed{s}", "raw", "kd (epochs=36)", s, 36, 87.0, 82.0,
               83.0 + s * 0.5) for s in (1, 2)]
    frame = pd.concat([frame, pd.DataFrame(longer, columns=frame.columns)], ignore_index=True)
    family = length_comparisons(frame)
    assert list(family["comparison"]) == ["kd 36 epochs − 12 epochs"]
    assert family["runs"][0] == "3 pairs by seed"
    assert family["difference (points)"][0] == "+3.50"  # (83 - 79 + 83.5 - 80 + 84 - 81) / 3


def test_the_best_recipe_is_chosen_on_validation_at_the_longest_length():
    """Among the methods at 36 epochs: KD's validation (82.0) beats the student alone's
    (80.0) by more than a point, though its test would not decide; 12 epochs are not
    candidates, however high their validation."""
    frame = results()
    frame.loc[frame["run"] == "student_kd_seed2", "val_acc"] = 99.0
    recipes = best_recipe(frame)
    assert list(recipes["recipe"]) == ["kd (epochs=36)", "ce (epochs=36)"]
    assert list(recipes["decision"]) == ["chosen", "below"]
    frame.loc[frame["run"] == "student_ce_e36_seed0", "val_acc"] = 81.5
    assert list(best_recipe(frame)["decision"]) == [
        "best so far: decide on a second seed", "within 0.50 of the best: decide on a second seed"]


def test_a_recipe_is_one_whatever_its_evaluation_labelled_it():
    """evaluate.py names a setting in a variant only where the runs it read differ in it: the
    student alone's 96-epoch seeds evaluated without its 12-epoch runs are plain `ce`, the
    H200's seed 0 `ce (epochs=96)`. The best recipe pools them as the one recipe they are."""
    frame = results()
    frame["variant"] = frame["variant"].replace("ce (epochs=36)", "ce")
    frame = pd.concat([frame, pd.DataFrame(
        [("student_ce_e36_seed1", "raw", "ce (epochs=36)", 1, 36, 88.0, 81.0, 80.5)],
        columns=frame.columns)])
    recipes = best_recipe(frame).set_index("recipe")
    assert list(recipes.index) == ["kd (epochs=36)", "ce (epochs=36)"]
    assert recipes.loc["ce (epochs=36)", "seeds"] == 2
    assert recipes.loc["ce (epochs=36)", "val_acc"] == 80.5


def test_whether_a_gap_changes_with_length_is_tested_per_seed():
    """KD's lead over the student alone, seed by seed: 3.0, 3.1, 2.9 points at 12 epochs and
    2.0, 2.2, 1.9 at 36. The change is the paired difference of the two gaps (-1.0, -0.9,
    -1.0), not the difference of their means over unpaired runs; KD at 96 epochs (one seed)
    gives no row."""
    rows = []
    for seed, (ce12, ce36) in enumerate(((76.0, 80.0), (75.5, 80.2), (76.2, 79.9))):
        for method, epochs, acc in (("ce", 12, ce12), ("ce", 36, ce36),
                                    ("kd", 12, ce12 + (3.0, 3.1, 2.9)[seed]),
                                    ("kd", 36, ce36 + (2.0, 2.2, 1.9)[seed])):
            rows.append((f"student_{method}_e{epochs}_seed{seed}", "raw",
                         f"{method} (epochs={epochs})", seed, epochs, 90.0, acc, acc))
    rows.append(("student_kd_e96_seed0", "raw", "kd (epochs=96)", 0, 96, 95.0, 84.0, 84.0))
    frame = pd.DataFrame(rows, columns=results().columns)
    family = gap_changes(frame)
    assert list(family["comparison"]) == ["kd − ce: 36 epochs − 12 epochs"]
    assert family["runs"][0] == "3 pairs by seed"
    assert family["difference (points)"][0] == "-0.97"
    assert family["verdict"][0].startswith("kd − ce: 36 epochs below 12 epochs")
    assert gap_changes(frame[frame["epochs"] != 36]) is None


def dkd_two_settings():
    """KD at 36 epochs, DKD with its 1-epoch warm-up at 12 and 36 (the study's setting) and
    with the paper's 8 at 36 only (a side question), seeds 0-2; evaluate.py names the
    setting where the runs it read differ in it."""
    rows = [(f"student_kd_e36_seed{s}", "raw", "kd (epochs=36)", s, 36, 87.0, 82.0, 83.0 + s)
            for s in range(3)]
    for warmup, epochs, gains in ((1.0, 12, (0.0, 0.1, 0.0)), (1.0, 36, (0.0, 0.0, 0.0)),
                                  (8.0, 36, (0.5, 0.7, 0.3))):
        rows += [(f"student_dkd_w{warmup}_e{epochs}_seed{s}", "raw",
                  f"dkd (dkd_warmup={warmup}, epochs={epochs})", s, epochs, 85.0, 80.0,
                  80.0 + s + gain - (36 - epochs) / 6)
                 for s, gain in enumerate(gains)]
    return pd.DataFrame(rows, columns=results().columns)


def test_a_second_setting_of_one_method_is_compared_with_the_first_paired_by_seed():
    """The side setting against the study's (warm-up 8 − warm-up 1, seed by seed) and against
    the baselines at its length, in a family of its own; KD, with one setting, gives none."""
    frame = dkd_two_settings()
    family = setting_comparisons(frame)
    assert list(family["comparison"]) == [
        "dkd (dkd_warmup=8.0) − dkd (dkd_warmup=1.0) at 36 epochs",
        "dkd (dkd_warmup=8.0) − kd at 36 epochs"]
    assert family["runs"][0] == "3 pairs by seed"
    assert family["difference (points)"].tolist() == ["+0.50", "-2.50"]
    assert setting_comparisons(frame[~frame["variant"].str.contains("8.0")]) is None
    third = frame[frame["variant"].str.contains("8.0")].replace(
        {"variant": {"dkd (dkd_warmup=8.0, epochs=36)": "dkd (dkd_warmup=4.0, epochs=36)"}})
    family = setting_comparisons(pd.concat([frame, third.assign(run=third["run"] + "b")]))
    assert list(family["comparison"]) == [  # two side settings: compared once, not twice
        "dkd (dkd_warmup=4.0) − dkd (dkd_warmup=1.0) at 36 epochs",
        "dkd (dkd_warmup=4.0) − dkd (dkd_warmup=8.0) at 36 epochs",
        "dkd (dkd_warmup=4.0) − kd at 36 epochs",
        "dkd (dkd_warmup=8.0) − dkd (dkd_warmup=1.0) at 36 epochs",
        "dkd (dkd_warmup=8.0) − kd at 36 epochs"]


def test_a_side_setting_leaves_the_studys_own_comparisons_as_they_were():
    """Adding a method's second setting at one length must not re-weigh (Holm) the planned
    comparisons at that length: it stays out of their family."""
    frame = dkd_two_settings()
    family = comparisons(frame, 36)
    assert list(family["comparison"]) == ["dkd (dkd_warmup=1.0) − kd"]
    without = comparisons(frame[~frame["variant"].str.contains("8.0")], 36)
    assert family.equals(without)


def test_a_side_setting_at_two_lengths_leaves_the_families_across_lengths_as_they_were():
    """A side setting run at two lengths (fewer than its method's three) entered "longer
    against shorter" and "change of lead", re-weighing (Holm) the study's planned tests
    there; its own longer against shorter belongs with its other side comparisons."""
    frame = dkd_two_settings()
    def runs_of(variant, epochs, shift):
        rows = frame[frame["variant"] == variant]
        return rows.assign(run=rows["run"] + f"_e{epochs}", epochs=epochs,
                           variant=variant.replace("epochs=36", f"epochs={epochs}"),
                           test_acc=rows["test_acc"] + shift + 0.2 * rows["seed"] ** 2)
    study = pd.concat([frame, runs_of("dkd (dkd_warmup=1.0, epochs=36)", 96, 1.0),
                       runs_of("kd (epochs=36)", 12, -2.0), runs_of("kd (epochs=36)", 96, 0.5)])
    joined = pd.concat([study, runs_of("dkd (dkd_warmup=8.0, epochs=36)", 12, -1.5)])
    assert length_comparisons(joined).equals(length_comparisons(study))
    assert gap_changes(joined).equals(gap_changes(study))
    side = set(setting_comparisons(joined)["comparison"])
    assert {"dkd (dkd_warmup=8.0) 36 epochs − 12 epochs",  # and its change of lead
            "dkd (dkd_warmup=8.0) − kd: 36 epochs − 12 epochs"} <= side, side


def test_two_settings_of_one_method_at_every_length_are_compared_in_its_family():
    """DKD at two settings, both at 12 and 36 epochs: both are the study's methods, each
    against the baselines, and against each other (once) in each length's family."""
    frame = dkd_two_settings()
    twelve = frame[frame["variant"].str.contains("8.0")].assign(
        run=lambda rows: rows["run"] + "_12", epochs=12,
        variant="dkd (dkd_warmup=8.0, epochs=12)")
    family = comparisons(pd.concat([frame, twelve]), 36)
    assert list(family["comparison"]) == ["dkd (dkd_warmup=1.0) − kd", "dkd (dkd_warmup=8.0) − kd",
                                          "dkd (dkd_warmup=1.0) − dkd (dkd_warmup=8.0)"]
    assert family["difference (points)"].tolist()[-1] == "-0.50"
    assert setting_comparisons(pd.concat([frame, twelve])) is None  # no side setting left


def test_a_second_setting_of_a_baseline_is_compared_with_it_once():
    """KD at a second temperature is a method against the baseline KD and a setting of KD:
    it was tested twice (with opposite signs), which made Holm's family one test larger."""
    rows = [(f"student_{name}_seed{s}", "raw", f"{label} (epochs=36)" if "(" not in label
             else label.replace(")", ", epochs=36)"), s, 36, 87.0, 82.0, base + 0.3 * s * s)
            for name, label, base in (("ce", "ce", 80.0), ("kd", "kd", 83.0),
                                      ("kd_t2", "kd (temperature=2.0)", 82.0))
            for s in range(3)]
    family = comparisons(pd.DataFrame(rows, columns=results().columns), 36)
    pairs = [frozenset(c.split(" − ")) for c in family["comparison"]]
    assert len(pairs) == len(set(pairs)) == 3, list(family["comparison"])


def test_a_method_left_out_gives_the_families_as_they_were_before_it_joined():
    frame = dkd_two_settings()
    twelve = frame[frame["variant"].str.contains("8.0")].assign(
        run=lambda rows: rows["run"] + "_12", epochs=12,
        variant="dkd (dkd_warmup=8.0, epochs=12)")
    joined = pd.concat([frame, twelve])
    before = leave_out(joined, ["dkd (dkd_warmup=8.0*"])
    assert comparisons(before, 36).equals(comparisons(frame, 36))  # the side setting's own
    assert len(comparisons(joined, 36)) == 3 and len(comparisons(before, 36)) == 1
    with pytest.raises(UserError, match="no method matches ce [(]"):
        leave_out(joined, ["ce ("])


def test_the_teachers_of_each_seeds_runs_are_named_where_they_are_recorded():
    """A seed's comparisons are paired on the assumption that its students share one teacher;
    runs from two machines may each have their own teacher of that seed, or none recorded."""
    frame = results()
    frame = frame.assign(teacher_seed=frame["seed"].where(frame["run"] != "student_ce_e36_seed0"),
                         teacher_sha256=None)
    frame.loc[frame["run"].str.startswith("student_kd_seed"), "teacher_sha256"] = "aaaa"
    assert teachers_by_seed(student_runs(frame)) == (
        "seed 0: 1 teacher (aaaa: 1 run), 1 run without a teacher recorded; "
        "seed 1: 1 teacher (aaaa: 1 run); seed 2: 1 teacher (aaaa: 1 run)")
    frame.loc[frame["run"] == "student_kd_e36_seed0", "teacher_sha256"] = "bbbb"
    assert teachers_by_seed(student_runs(frame)).startswith(
        "seed 0: 2 teachers (aaaa: 1 run, bbbb: 1 run); seed 1")
    assert teachers_by_seed(student_runs(frame.drop(columns=["teacher_sha256"]))) == (
        "seed 0: 2 runs without a teacher recorded; seed 1: 1 run without a teacher "
        "recorded; seed 2: 1 run without a teacher recorded")


def test_each_comparison_is_set_beside_the_same_from_other_runs():
    """The study on other runs (one machine's, say, against three machines'): each
    comparison's difference and verdict in both, and whether the verdict is the same; a
    comparison the other runs cannot make is named as such."""
    rows = []
    for seed in range(3):
        for method, acc in (("ce", 76.0 + 0.3 * seed), ("kd", 79.0 + 0.2 * seed),
                            ("crd", 76.6 + 0.35 * seed)):
            rows.append((f"student_{method}_seed{seed}", "raw", method, seed, 12, 80.0, acc, acc))
    mine = pd.DataFrame(rows, columns=results().columns)
    other = mine.assign(test_acc=mine["test_acc"]
                        + mine["variant"].map({"ce": 0.0, "kd": 0.0, "crd": -0.6})
                        + mine["seed"].map({0: 0.0, 1: 0.8, 2: -0.6}) * (mine["variant"] == "crd"))
    other = other[~((other["variant"] == "kd") & (other["seed"] > 0))]
    table = beside(families(mine), families(other)).set_index("comparison")
    assert table.loc["kd − ce", "difference (points)"] == "+2.90"
    assert table.loc["crd − ce", "difference (points)"] == "+0.65"
    assert table.loc["crd − ce", "beside: difference"] == "+0.12"
    assert table.loc["crd − ce", "verdict"].startswith("crd above ce")
    assert table.loc["crd − ce", "same verdict"] == "no: unresolved beside"
    assert table.loc["kd − ce", "same verdict"] == "no comparison beside"
    assert table.loc["kd − ce", "beside: difference"] == ""
    assert table.loc["crd − kd", "family"] == "at 12 epochs"


def test_one_recipe_labelled_two_ways_by_two_evaluations_is_read_as_one():
    """evaluate.py names only the settings its runs differ in: a recipe evaluated apart can
    carry a shorter label, one without a setting at its default (dkd_warmup=1.0 here).
    Labels whose settings away from train_student.py's defaults agree are one recipe, under
    the longest of them, in every table read together and keeping each run's length; a
    setting away from its default keeps its recipe apart."""
    first = pd.DataFrame({"variant": ["dkd (clip_grad_norm=0.0, dkd_beta=0.5, dkd_warmup=1.0, "
                                      "epochs=12)", "dkd (clip_grad_norm=5.0, dkd_beta=8.0, "
                                      "dkd_warmup=8.0)", "kd (epochs=12)"],
                          "epochs": [12, 96, 12]})
    second = pd.DataFrame({"variant": ["dkd (clip_grad_norm=0.0, dkd_beta=0.5)",
                                       "dkd (clip_grad_norm=5.0, dkd_beta=8.0, epochs=36)",
                                       "kd"], "epochs": [36, 36, 96]})
    (first, second), read_as = one_label_per_recipe([first, second])
    assert read_as == {"dkd (clip_grad_norm=0.0, dkd_beta=0.5)":
                       "dkd (clip_grad_norm=0.0, dkd_beta=0.5, dkd_warmup=1.0)"}
    assert list(first["variant"]) == [
        "dkd (clip_grad_norm=0.0, dkd_beta=0.5, dkd_warmup=1.0, epochs=12)",
        "dkd (clip_grad_norm=5.0, dkd_beta=8.0, dkd_warmup=8.0)", "kd (epochs=12)"]
    assert list(second["variant"]) == [
        "dkd (clip_grad_norm=0.0, dkd_beta=0.5, dkd_warmup=1.0)",
        "dkd (clip_grad_norm=5.0, dkd_beta=8.0, epochs=36)", "kd"]


def test_readmes_figure_is_what_the_study_draws_from_the_committed_tables(tmp_path):
    """README's docs/figures/length.png was the default --figure, so a run on other tables
    (the three-machine version) replaced it with a figure of runs the README's table does
    not hold. The default is plots/ now; the committed figure must be the study's own."""
    figure = tmp_path / "length.png"
    subprocess.run([sys.executable, "experiments/length_study.py", "--figure", figure],
                   cwd=ROOT, check=True, capture_output=True)
    assert figure.read_bytes() == (ROOT / "docs/figures/length.png").read_bytes()


def test_a_run_resumed_on_another_machine_keeps_both_short_names():
    """A config's machine of a run resumed elsewhere is "A (...), then B (...)": the greedy
    shortening kept "A" alone, as if it had run there only."""
    both = "AMD EPYC (family 25, model 1; 2 CPUs), then Intel Xeon (family 6; 2 CPUs)"
    names = short_machine_names(pd.Series([both, "AMD EPYC (family 25, model 1; 2 CPUs)"]))
    assert names[both] == "AMD EPYC, then Intel Xeon"
