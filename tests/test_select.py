"""experiments/select_settings.py: each method's setting chosen on validation from a sweep's
records, settings within the margin left to a second seed, runs that stopped short never
chosen."""
import subprocess
import sys

import pandas as pd

from conftest import ROOT, write_run
from kd.results import markdown, run_table

sys.path.insert(0, str(ROOT / "experiments"))
from select_settings import SHOWN, decisions  # noqa: E402


def rows_by_setting(table, method):
    rows = table[table["method"] == method]
    return dict(zip(rows["setting"], rows["decision"]))


def stop_after_first_epoch(folder, name):
    metrics = pd.read_csv(folder / f"{name}.metrics.csv")
    metrics.iloc[:1].to_csv(folder / f"{name}.metrics.csv", index=False)


def test_the_best_setting_is_chosen_and_a_close_one_left_to_a_second_seed(tmp_path):
    # write_run's runs are 2 epochs long; val_acc is the last epoch's
    write_run(tmp_path, "fitnet_w10", "fitnet", 0, None, val_acc=70.0, fitnet_weight=10.0)
    write_run(tmp_path, "fitnet_w100", "fitnet", 0, None, val_acc=72.0, fitnet_weight=100.0)
    write_run(tmp_path, "fitnet_w1000", "fitnet", 0, None, val_acc=71.5, fitnet_weight=1000.0)
    write_run(tmp_path, "at_w100", "at", 0, None, val_acc=69.0, at_weight=100.0)
    write_run(tmp_path, "at_w1000", "at", 0, None, val_acc=67.0, at_weight=1000.0)
    write_run(tmp_path, "kd", "kd", 0, None, val_acc=73.0)
    # DKD at beta 8 stopped after epoch 1 (diverged): its records end there
    write_run(tmp_path, "dkd_b8", "dkd", 0, None, val_acc=75.0, dkd_beta=8.0)
    stop_after_first_epoch(tmp_path, "dkd_b8")
    write_run(tmp_path, "dkd_b8_clip", "dkd", 0, None, val_acc=71.0, dkd_beta=8.0,
              clip_grad_norm=5.0)
    proc = subprocess.run([sys.executable, "experiments/select_settings.py", tmp_path],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    table = pd.read_csv(tmp_path / "selection.csv")
    assert rows_by_setting(table, "fitnet") == {
        "fitnet_weight=100.0": "best so far: decide on a second seed",
        "fitnet_weight=1000.0": "within 0.50 of the best: decide on a second seed",
        "fitnet_weight=10.0": "below"}
    assert rows_by_setting(table, "at") == {"at_weight=100.0": "chosen",
                                            "at_weight=1000.0": "below"}
    assert rows_by_setting(table, "kd") == {"default": "only setting"}
    assert rows_by_setting(table, "dkd") == {
        "clip_grad_norm=5.0": "chosen among the finished (1 setting unfinished: still "
                              "training, or stopped)",
        "clip_grad_norm=0.0": "incomplete (epoch 1 of 2)"}
    assert "| fitnet" in proc.stdout and "test" not in pd.read_csv(
        tmp_path / "selection.csv").columns


def test_a_second_seed_decides_between_close_settings(tmp_path):
    for seed, (a, b) in enumerate([(72.0, 71.5), (71.0, 72.9)]):
        write_run(tmp_path, f"at_w100_seed{seed}", "at", seed, None, val_acc=a, at_weight=100.0)
        write_run(tmp_path, f"at_w1000_seed{seed}", "at", seed, None, val_acc=b,
                  at_weight=1000.0)
    table = decisions(run_table([tmp_path]))
    assert rows_by_setting(table, "at") == {"at_weight=1000.0": "chosen",
                                            "at_weight=100.0": "below"}
    assert table.set_index("setting").at["at_weight=1000.0", "val_acc"] == 72.2


def test_across_methods_one_recipe_is_chosen_among_all(tmp_path):
    """experiments/grids/select-e200.toml: the best student's recipe, whatever its method; per
    method, each is its only setting."""
    write_run(tmp_path, "kd_e200", "kd", 0, None, val_acc=85.0)
    write_run(tmp_path, "kd+ce_e200", "kd+ce", 0, None, val_acc=85.6)
    write_run(tmp_path, "kd+mixup_e200", "kd", 0, None, val_acc=83.0, mixup=True)
    runs = run_table([tmp_path])
    assert set(decisions(runs)["decision"]) == {"only setting"}
    table = decisions(runs, across=True)
    assert set(table["method"]) == {"any"}
    assert dict(zip(table["setting"].str.split(" ").str[0], table["decision"])) == {
        "kd+ce": "best so far: decide on a second seed",
        "kd": "within 0.60 of the best: decide on a second seed",
        "kd+mixup": "below"}


def test_records_of_runs_made_elsewhere_join_the_runs_of_the_same_name(tmp_path):
    """--records: a seed whose records are not at hand (a CSV of run, seed, val_acc, epochs)
    joins the folder's runs of the same name but for the seed, as their recipe."""
    write_run(tmp_path, "at_w100_seed1", "at", 1, None, val_acc=71.0, at_weight=100.0)
    write_run(tmp_path, "at_w1000_seed1", "at", 1, None, val_acc=72.9, at_weight=1000.0)
    records = tmp_path / "seed0.csv"
    pd.DataFrame({"run": ["at_w100_seed0", "at_w1000_seed0"], "seed": [0, 0],
                  "val_acc": [72.0, 71.5], "epochs": [2, 2],
                  "machine": ["elsewhere"] * 2}).to_csv(records, index=False)
    proc = subprocess.run([sys.executable, "experiments/select_settings.py", tmp_path,
                           "--records", records], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    table = pd.read_csv(tmp_path / "selection.csv").set_index("setting")
    assert dict(table["decision"]) == {"at_weight=1000.0": "chosen", "at_weight=100.0": "below"}
    assert dict(table["seeds"]) == {"at_weight=1000.0": 2, "at_weight=100.0": 2}
    assert table.at["at_weight=1000.0", "val_acc"] == 72.2
    assert "seed0.csv" in proc.stdout


def test_a_record_that_matches_no_run_is_left_out_with_a_note(tmp_path):
    """A setting whose second seed has not run yet is decided on what there is."""
    write_run(tmp_path, "at_w100_seed1", "at", 1, None, val_acc=71.0, at_weight=100.0)
    records = tmp_path / "seed0.csv"
    pd.DataFrame({"run": ["at_w100_seed0", "fitnet_w10_seed0"], "seed": [0, 0],
                  "val_acc": [72.0, 90.0], "epochs": [2, 2]}).to_csv(records, index=False)
    proc = subprocess.run([sys.executable, "experiments/select_settings.py", tmp_path,
                           "--records", records], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert "fitnet_w10_seed0; left out" in proc.stderr
    table = pd.read_csv(tmp_path / "selection.csv")
    assert list(table["method"]) == ["at"] and list(table["val_acc"]) == [71.5]


def test_records_without_a_needed_column_are_a_one_line_error(tmp_path):
    write_run(tmp_path, "at_w100_seed1", "at", 1, None, val_acc=71.0, at_weight=100.0)
    records = tmp_path / "seed0.csv"
    pd.DataFrame({"run": ["at_w100_seed0"], "seed": [0], "val_acc": [72.0]}).to_csv(
        records, index=False)
    proc = subprocess.run([sys.executable, "experiments/select_settings.py", tmp_path,
                           "--records", records], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no column epochs" in proc.stderr


def test_the_printed_table_shows_accuracy_to_the_hundredth_and_minutes_to_the_tenth():
    """Printed as formatted (no number parsing), so the script formats its floats itself: a
    median of 5.6 and 5.8 minutes is 5.699999999999999 in floating point."""
    table = pd.DataFrame({"method": ["crd"], "val_acc": [76.2], "minutes": [(5.6 + 5.8) / 2],
                          "seeds": [2], "note": [float("nan")]})
    row = markdown(table, SHOWN).splitlines()[-1]
    assert [cell.strip() for cell in row.split("|")[1:-1]] == ["crd", "76.20", "5.7", "2", ""]
    assert markdown(table).splitlines()[-1].split("|")[3].strip() == "5.7"  # no spec given


def test_a_seed_still_running_is_not_counted_and_decides_nothing_yet(tmp_path):
    """A setting's unfinished seed entered its mean (a half-trained run's accuracy), the
    setting was called incomplete, and its rival was chosen meanwhile."""
    write_run(tmp_path, "crd_w0.2_seed0", "crd", 0, None, val_acc=77.1, crd_weight=0.2)
    write_run(tmp_path, "crd_w0.2_seed1", "crd", 1, None, val_acc=77.0, crd_weight=0.2)
    stop_after_first_epoch(tmp_path, "crd_w0.2_seed1")
    for seed, acc in enumerate([76.0, 76.2]):
        write_run(tmp_path, f"crd_w0.8_seed{seed}", "crd", seed, None, val_acc=acc,
                  crd_weight=0.8)
    table = decisions(run_table([tmp_path])).set_index("setting")
    assert dict(table["decision"]) == {
        "crd_weight=0.2": "best so far: decide on a second seed (1 seed unfinished: epoch 1 "
                          "of 2, not counted)",
        "crd_weight=0.8": "within 1.00 of the best: decide on a second seed"}
    assert table.at["crd_weight=0.2", "val_acc"] == 77.1
    assert table.at["crd_weight=0.2", "seeds"] == 1


def test_nothing_is_chosen_before_any_run_has_finished(tmp_path):
    """The sweep's length was guessed as the longest any run had reached: a run at epoch 1
    of 2 was chosen over runs that had not got that far."""
    write_run(tmp_path, "at_w100", "at", 0, None, val_acc=70.0, at_weight=100.0)
    write_run(tmp_path, "at_w1000", "at", 0, None, val_acc=72.0, at_weight=1000.0)
    for name in ("at_w100", "at_w1000"):
        stop_after_first_epoch(tmp_path, name)
    table = decisions(run_table([tmp_path]))
    assert set(table["decision"]) == {"incomplete (epoch 1 of 2)"}


def test_a_tie_at_the_best_chooses_neither_whatever_the_order(tmp_path):
    """Validation accuracy moves in steps of 0.02 points, so means tie: the first row was
    chosen and the other called below, at a gap of 0.00."""
    for seed in range(2):
        for name, weight, acc in (("a", 10.0, 71.0 + seed), ("b", 100.0, 72.0 - seed)):
            write_run(tmp_path, f"fitnet_{name}_seed{seed}", "fitnet", seed, None,
                      val_acc=acc, fitnet_weight=weight)
    write_run(tmp_path, "fitnet_c_seed0", "fitnet", 0, None, val_acc=60.0, fitnet_weight=1.0)
    runs = run_table([tmp_path])
    for order in (runs, runs.iloc[::-1]):
        table = decisions(order).set_index("setting")
        assert dict(table["decision"]) == {
            "fitnet_weight=10.0": "tied at the best: not decided",
            "fitnet_weight=100.0": "tied at the best: not decided",
            "fitnet_weight=1.0": "below"}


def test_a_run_started_longer_holds_back_its_own_method_only(tmp_path):
    """The length was the folder's longest: one run extended to 4 epochs made every method's
    settings incomplete."""
    write_run(tmp_path, "kd_T2", "kd", 0, None, val_acc=73.0, temperature=2.0)
    write_run(tmp_path, "kd_T4", "kd", 0, None, val_acc=76.0, temperature=4.0)
    write_run(tmp_path, "at_w100", "at", 0, None, val_acc=70.0, at_weight=100.0, epochs=4)
    write_run(tmp_path, "at_w1000", "at", 0, None, val_acc=72.0, at_weight=1000.0)
    table = decisions(run_table([tmp_path])).set_index("setting")
    assert dict(table["decision"]) == {
        "temperature=4.0": "chosen", "temperature=2.0": "below",
        "at_weight=100.0, epochs=4": "incomplete (epoch 2 of 4)",
        "at_weight=1000.0, epochs=2": "incomplete (epoch 2 of 4)"}


def test_no_setting_is_chosen_plainly_while_another_of_its_method_is_unfinished(tmp_path):
    """A setting still training (or diverged: the records cannot tell) was not counted, and
    its rival was called "chosen" as if the comparison were over."""
    write_run(tmp_path, "kd_T4", "kd", 0, None, val_acc=79.0, temperature=4.0)
    write_run(tmp_path, "kd_T2", "kd", 0, None, val_acc=75.0, temperature=2.0)
    stop_after_first_epoch(tmp_path, "kd_T2")
    table = decisions(run_table([tmp_path])).set_index("setting")
    assert dict(table["decision"]) == {
        "temperature=4.0": "chosen among the finished (1 setting unfinished: still "
                           "training, or stopped)",
        "temperature=2.0": "incomplete (epoch 1 of 2)"}
