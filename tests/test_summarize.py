import json
import shutil
import warnings

import pandas as pd

from conftest import write_run
from kd.plotting import (
    mean_teacher_curves,
    plot_compare,
    plot_teachers,
    student_curves,
    teacher_curves,
)
from kd.results import (
    ADDED_RECIPE_KEYS,
    label_settings,
    recipe_labels,
    recipe_sha256,
    run_table,
    run_variant,
    seed_table,
    variant_rank,
)


def test_mean_and_std_over_seeds(tmp_path):
    for seed, acc in enumerate([70.0, 72.0, 74.0]):
        write_run(tmp_path, f"student_kd_seed{seed}", "kd", seed, acc)
    write_run(tmp_path, "student_ce_seed0", "ce", 0, 65.0)
    write_run(tmp_path, "student_ce_seed1", "ce", 1, None)  # unfinished: no test number
    # extended after its test (a stale record of epoch 1 beside 2 epochs): no test number
    write_run(tmp_path, "student_ce_seed2", "ce", 2, 99.0, tested_epoch=1)
    runs = run_table([tmp_path])
    assert len(runs) == 6 and runs["val_acc"].tolist()[0] == 50.0
    assert runs.loc[runs.run == "student_kd_seed0", "minutes"].item() == 1.0
    assert runs.loc[runs.run == "student_kd_seed0", "img/s"].item() == 200
    table = seed_table(runs, ["model", "variant", "epochs"]).set_index("variant")
    assert table.loc["kd", "test_acc"] == "72.00 ± 2.00" and table.loc["kd", "seeds"] == 3
    assert table.loc["ce", "test_acc"] == "65.00" and table.loc["ce", "seeds"] == 1


def test_a_paused_epoch_does_not_count_in_a_runs_minutes(tmp_path):
    """A run stopped for 14 minutes in its third epoch (a suspended laptop, a SIGSTOP while
    the cores are needed) reads as its 3 epochs at its median epoch time."""
    write_run(tmp_path, "student_kd_seed0", "kd", 0, 70.0)
    metrics = tmp_path / "student_kd_seed0.metrics.csv"
    history = pd.read_csv(metrics)
    paused = {"epoch": 3, "val_acc": 51.0, "val_loss": 0.8, "epoch_seconds": 870,
              "images_per_second": 10}
    pd.concat([history, pd.DataFrame([paused])]).to_csv(metrics, index=False)
    assert run_table([tmp_path])["minutes"].item() == 1.5


def test_runs_of_different_recipes_are_never_pooled(tmp_path):
    """A probe (another temperature) or a dry run left beside the seeds of a recipe gets a
    row of its own, named by what differs; seeds of one recipe stay pooled."""
    for seed, acc in enumerate([70.0, 72.0]):
        write_run(tmp_path, f"student_kd_seed{seed}", "kd", seed, acc)
    write_run(tmp_path, "probe_T2", "kd", 0, 60.0, temperature=2.0)
    write_run(tmp_path, "dry", "kd", 0, 10.0, dry_run=True)
    write_run(tmp_path, "student_ce_seed0", "ce", 0, 65.0)
    write_run(tmp_path, "student_ce_seed1", "ce", 1, 67.0, temperature=8.0)  # unused by ce
    table = seed_table(run_table([tmp_path]), ["model", "variant", "epochs"]).set_index("variant")
    assert table.loc["kd (dry_run=None, temperature=4.0)", "test_acc"] == "71.00 ± 1.41"
    assert table.loc["kd (dry_run=None, temperature=2.0)", "test_acc"] == "60.00"
    assert table.loc["kd (dry_run=True, temperature=4.0)", "test_acc"] == "10.00"
    assert table.loc["ce", "test_acc"] == "66.00 ± 1.41"


def test_the_table_gives_the_most_memory_a_run_held(tmp_path):
    """In GB, the highest epoch's peak; blank for a run from before peaks were recorded, and
    a resumed old run's epochs without one do not hide the peaks of the rest."""
    for name in ("new", "resumed", "old"):
        write_run(tmp_path, name, "kd", 0, 70.0)
    for name, peaks in {"new": [1536, 2048], "resumed": [None, 1024]}.items():
        metrics = tmp_path / f"{name}.metrics.csv"
        pd.read_csv(metrics).assign(peak_memory_mb=peaks).to_csv(metrics, index=False)
    peak = run_table([tmp_path]).set_index("run")["peak_gb"]
    assert peak["new"] == 2.0 and peak["resumed"] == 1.0 and pd.isna(peak["old"])


def test_the_table_shows_alpha_only_where_it_weighs_the_loss(tmp_path):
    """A KD + CE run weighted by --kd-weight 9 --ce-weight 0.1 (logit standardization's
    authors' setting) showed alpha 0.5, its unused default, beside runs that mix by it."""
    write_run(tmp_path, "mixed", "kd+ce", 0, 70.0, alpha=0.5)
    write_run(tmp_path, "weighted", "kd+ce", 0, 70.0, alpha=0.5, kd_weight=9.0, ce_weight=0.1)
    write_run(tmp_path, "alone", "kd", 0, 70.0)
    alpha = run_table([tmp_path]).set_index("run")["alpha"]
    assert alpha["mixed"] == 0.5 and alpha[["weighted", "alone"]].isna().all()


def test_recipe_labels_name_only_what_differs():
    base = {"model": {"name": "student", "arch_args": {"widths": [32, 64]}}, "loss": "kd+ce",
            "temperature": 4.0, "lr": 0.1, "seed": 0, "out": "a.pt", "git_commit": "x",
            "teacher_identity": {"sha256": "a" * 64}}
    runs = [("kd+ce", base), ("kd+ce", {**base, "seed": 1, "out": "b.pt", "git_commit": "y",
                                        "machine": "AMD EPYC (2 CPUs, bf16 units: none)"}),
            ("kd+ce", {**base, "teacher_identity": {"sha256": "b" * 64}}),
            ("teacher", {"model": {"name": "teacher", "arch_args": {"widths": [8]}}})]
    assert recipe_labels(runs) == ["kd+ce (teacher=aaaaaaaaaaaa)", "kd+ce (teacher=aaaaaaaaaaaa)",
                                   "kd+ce (teacher=bbbbbbbbbbbb)", "teacher"]


def test_a_label_splits_into_its_settings_lists_whole():
    """recipe_labels writes a list setting as JSON ("widths=[32, 64]"): one setting."""
    runs = [("kd", {"loss": "kd", "epochs": epochs,
                    "model": {"name": "student", "arch_args": {"widths": widths}}})
            for epochs, widths in ((12, [32, 64]), (36, [48, 96]))]
    label = recipe_labels(runs)[0]
    assert label == "kd (epochs=12, widths=[32, 64])"
    assert label_settings(label) == ("kd", ["epochs=12", "widths=[32, 64]"])
    assert label_settings("kd (a=[[1, 2], [3]], b={\"c\": 1, \"d\": 2})") == (
        "kd", ["a=[[1, 2], [3]]", 'b={"c": 1, "d": 2}'])
    assert label_settings("kd") == ("kd", [])


def test_a_run_from_before_a_setting_existed_pools_with_runs_at_that_settings_old_value():
    old = {"model": {"name": "student", "arch_args": {"widths": [32, 64]}}, "loss": "kd+ce",
           "temperature": 4.0, "seed": 0}
    new = {**old, "seed": 1, "clip_grad_norm": 0.0, "kd_weight": None, "ce_weight": None}
    clipped = {**new, "clip_grad_norm": 5.0}
    assert recipe_labels([("kd+ce", old), ("kd+ce", new), ("kd+ce", clipped)]) == [
        "kd+ce (clip_grad_norm=0.0)", "kd+ce (clip_grad_norm=0.0)", "kd+ce (clip_grad_norm=5.0)"]


def test_students_pool_over_their_teachers_seeds_never_over_their_recipes():
    """Issue 26: each seed's students distil from that seed's teacher. Teachers of one recipe
    (other seeds, other files) pool their students; a teacher of another recipe (20 epochs
    against 40) keeps its students apart; a student recorded before teachers' recipes were
    knows its teacher by its weights."""
    def teacher(seed, epochs=40):
        config = {"model": {"name": "teacher", "arch_args": {"widths": [8]}}, "seed": seed,
                  "epochs": epochs, "lr": 0.1, "out": f"teacher_seed{seed}.pt",
                  "run_id": f"r{seed}", "data_identity": {"sha256": "d" * 64}}
        return {"sha256": f"{seed}{epochs}" * 16, "seed": seed,
                "recipe_sha256": recipe_sha256(config)}
    base = {"model": {"name": "student", "arch_args": {"widths": [32, 64]}}, "loss": "kd",
            "temperature": 4.0, "lr": 0.1}
    runs = [("kd", {**base, "seed": seed, "teacher_identity": identity}) for seed, identity in
            ((0, teacher(0)), (1, teacher(1)), (2, teacher(2)), (0, teacher(0, epochs=20)),
             (1, {"sha256": "a" * 64}))]
    forty, twenty = teacher(0)["recipe_sha256"][:12], teacher(0, 20)["recipe_sha256"][:12]
    assert forty != twenty
    assert recipe_labels(runs) == [f"kd (teacher={forty})"] * 3 + [
        f"kd (teacher={twenty})", "kd (teacher=aaaaaaaaaaaa)"]


def test_the_comparison_figure_never_pools_a_standardized_run_with_its_base_loss(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, f"student_kd+ce_seed{seed}", "kd+ce", seed, 70.0)
    write_run(tmp_path, "student_kd+ce+ls_seed0", "kd+ce", 0, 60.0, logit_standardize=True)
    curves = student_curves(tmp_path)
    assert {label: len(runs) for label, runs in curves.items()} == {"kd+ce": 2, "kd+ce+ls": 1}
    plot_compare(tmp_path, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_the_comparison_figures_find_runs_by_their_records_not_their_names(tmp_path):
    """students_compare.png drew only runs named student_*: a sweep's `kd+ce_T2_a0.5` or
    `ce_w48-96` was left out of it, a mean-teacher run named otherwise out of
    ema_compare.png."""
    write_run(tmp_path, "student_kd_seed0", "kd", 0, 70.0)
    write_run(tmp_path, "kd+ce_T2_seed0", "kd+ce", 0, 70.0, temperature=2.0)
    write_run(tmp_path, "mt_seed0", "kd", 0, 70.0)
    config = tmp_path / "mt_seed0.config.json"
    mean_teacher = {**json.loads(config.read_text()), "mode": "mean-teacher", "no_ema": False}
    config.write_text(json.dumps({k: v for k, v in mean_teacher.items() if k != "loss"}))
    teacher = tmp_path / "teacher.config.json"
    teacher.write_text(json.dumps({"model": {"name": "teacher", "arch_args": {}}, "epochs": 2}))
    shutil.copy(tmp_path / "student_kd_seed0.metrics.csv", tmp_path / "teacher.metrics.csv")
    assert sorted(student_curves(tmp_path)) == ["kd", "kd+ce"]
    assert [label for label, _ in mean_teacher_curves(tmp_path).items()] == [
        "student, teacher = EMA of the student"]


def test_the_teachers_figure_pools_their_seeds_and_nothing_else(tmp_path):
    """teachers_compare.png: each recipe's teacher runs over their seeds, and their EMA
    weights; a teacher of another recipe apart; students and mean-teacher runs left out."""
    def teacher(name, seed, epochs=2):
        config = {"model": {"name": "teacher", "arch_args": {"widths": [8]}}, "seed": seed,
                  "epochs": epochs, "lr": 0.1, "run_id": name}
        (tmp_path / f"{name}.config.json").write_text(json.dumps(config))
        pd.DataFrame({"epoch": range(1, epochs + 1), "val_acc": 50.0, "val_loss": 1.0,
                      "ema_val_acc": 49.0, "ema_val_loss": 1.1}).to_csv(
            tmp_path / f"{name}.metrics.csv", index=False)
    teacher("teacher", 0)
    teacher("teacher_seed1", 1)
    teacher("teacher_e3", 0, epochs=3)
    write_run(tmp_path, "student_kd_seed0", "kd", 0, 70.0)
    (tmp_path / "notes.config.json").write_text("{}")  # not a run's: no model named
    shutil.copy(tmp_path / "teacher.metrics.csv", tmp_path / "notes.metrics.csv")
    counts = {label: len(runs) for label, runs in teacher_curves(tmp_path).items()}
    assert counts == {"teacher (epochs=2)": 2, "teacher EMA (epochs=2)": 2,
                      "teacher (epochs=3)": 1, "teacher EMA (epochs=3)": 1}
    plot_teachers(tmp_path, tmp_path / "teachers.png")
    assert (tmp_path / "teachers.png").stat().st_size > 0


def test_a_mean_teacher_runs_second_model_is_named_its_teacher():
    mean_teacher = {"mode": "mean-teacher", "no_ema": True, "ema_decay": 0.995}
    assert run_variant(mean_teacher, ema=True) == "mean-teacher-no-ema teacher"
    assert run_variant({"loss": "kd", "logit_standardize": True}, ema=True) == "kd+ls EMA"
    ranks = [variant_rank(v) for v in ("teacher", "teacher EMA", "kd+ce", "kd+ce EMA", "ce",
                                       "mean-teacher", "mean-teacher teacher",
                                       "mean-teacher-no-ema (lr=0.2) teacher", "unknown")]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


def test_a_teachers_fingerprint_outlives_settings_added_later(monkeypatch):
    teacher = {"model": {"name": "teacher", "arch_args": {"widths": [8]}}, "seed": 0,
               "epochs": 40, "lr": 0.1}
    before = recipe_sha256(teacher)
    monkeypatch.setitem(ADDED_RECIPE_KEYS, "new_setting", 1.0)
    assert recipe_sha256(teacher) == recipe_sha256({**teacher, "new_setting": 1.0}) == before
    assert recipe_sha256({**teacher, "new_setting": 2.0}) != before


def test_the_comparison_figure_fits_a_legend_of_many_variants(tmp_path):
    """A folder that sweeps have filled (44 variants and EMAs in checkpoints/ once) still
    gets its legend laid out beside the axes: Matplotlib warns when it cannot."""
    for temperature in range(1, 45):
        write_run(tmp_path, f"student_kd_T{temperature}_seed0", "kd", 0, 70.0,
                  temperature=float(temperature))
    assert len(student_curves(tmp_path)) >= 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_compare(tmp_path, tmp_path / "compare.png")


def test_an_extended_run_is_not_pooled_with_one_trained_straight():
    """Extending a finished 10-epoch run to 20 trains a second one-cycle schedule on top: not
    the recipe of a 20-epoch run. Runs from before the schedule start was recorded started
    at 0, and their teachers' fingerprints stay as they were."""
    base = {"model": {"name": "student", "arch_args": {"widths": [32, 64]}}, "loss": "kd",
            "temperature": 4.0, "epochs": 20}
    runs = [("kd", {**base, "seed": 0, "schedule_start_epoch": 0}),
            ("kd", {**base, "seed": 1}),
            ("kd", {**base, "seed": 2, "schedule_start_epoch": 10})]
    assert recipe_labels(runs) == ["kd (schedule_start_epoch=0)"] * 2 + [
        "kd (schedule_start_epoch=10)"]
    assert recipe_sha256(runs[0][1]) == recipe_sha256(runs[1][1])


def test_a_seed_run_twice_is_one_seed_in_the_table():
    """A seed rerun (on another machine, or to check its bits) counted as a further seed:
    "4 seeds" and a std shrunk by the copy, while report.compare_runs averages it into one.
    Runs without a seed stay each their own."""
    runs = pd.DataFrame({"variant": ["ce"] * 4 + ["kd"] * 2, "seed": [0, 1, 2, 0, None, None],
                         "test_acc": [75.65, 76.35, 75.21, 75.65, 70.0, 72.0]})
    table = seed_table(runs, ["variant"])
    # rows in the order of first appearance: report.per_variant adds columns by position
    assert table["variant"].tolist() == ["ce", "kd"]
    assert seed_table(runs.iloc[::-1], ["variant"])["variant"].tolist() == ["kd", "ce"]
    table = table.set_index("variant")
    assert table.loc["ce", "seeds"] == 3 and table.loc["ce", "test_acc"] == "75.74 ± 0.57"
    assert table.loc["kd", "seeds"] == 2 and table.loc["kd", "test_acc"] == "71.00 ± 1.41"


def test_a_stopped_run_is_drawn_apart_from_its_recipes_finished_seeds(tmp_path):
    """evaluate.py labels an unfinished run apart; the comparison figures averaged it into
    its recipe's curve, whose mean then jumped where it stopped."""
    for seed in (0, 1):
        write_run(tmp_path, f"student_kd_seed{seed}", "kd", seed, 70.0)
    metrics = tmp_path / "student_kd_seed1.metrics.csv"
    pd.read_csv(metrics).iloc[:1].to_csv(metrics, index=False)
    curves = student_curves(tmp_path)
    assert {label: len(runs) for label, runs in curves.items()} == {
        "kd": 1, "kd (unfinished: epoch 1 of 2)": 1}


def test_a_one_epoch_run_is_drawn_on_whole_epochs(tmp_path, monkeypatch):
    """A dry run's figure had an axis from 0.945 to 1.065 in fractions of an epoch."""
    from kd import plotting
    ticks = []
    monkeypatch.setattr(plotting, "save", lambda fig, path: ticks.extend(
        [ax.get_xticks().tolist() for ax in fig.axes]) or plotting.plt.close(fig))
    history = [{"epoch": 1, "train_loss": 2.0, "train_acc": 10.0, "val_loss": 2.1,
                "val_acc": 9.0}]
    plotting.plot_curves(history, tmp_path / "one.png", "one")
    assert ticks and all(set(t) == {1.0} for t in ticks)


def test_a_mean_teacher_runs_curves_name_its_second_model_its_teacher(tmp_path, monkeypatch):
    """train_ema.py's second model is the student's teacher (frozen at its start, or the
    student itself): its curve was labelled "EMA val"."""
    from kd import plotting
    labels = []
    monkeypatch.setattr(plotting, "save", lambda fig, path: labels.extend(
        [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()])
        or plotting.plt.close(fig))
    history = [{"epoch": e, "train_loss": 2.0, "train_acc": 10.0, "val_loss": 2.1,
                "val_acc": 9.0, "ema_val_loss": 2.3, "ema_val_acc": 10.0} for e in (1, 2)]
    plotting.plot_curves(history, tmp_path / "c.png", "student", second_model="teacher")
    assert "teacher val" in labels and not any("EMA" in label for label in labels)
    labels.clear()
    plotting.plot_curves(history, tmp_path / "c.png", "student")
    assert "EMA val" in labels
