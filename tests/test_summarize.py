import json
import sys

import pandas as pd

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
from summarize import run_table  # noqa: E402

from results import seed_table  # noqa: E402


def write_run(folder, name, loss, seed, test_acc, val_acc=50.0, tested_epoch=2):
    config = {"run_id": name, "model": {"name": "student", "arch_args": {"widths": [32, 64]}},
              "loss": loss,
              "temperature": 4.0, "alpha": 0.9, "seed": seed, "train_subset": None,
              "batch_size": 256, "lr": 0.1, "weight_decay": 5e-4}
    (folder / f"{name}.config.json").write_text(json.dumps(config))
    pd.DataFrame([{"epoch": 1, "val_acc": val_acc - 5, "val_loss": 1.0, "epoch_seconds": 30,
                   "images_per_second": 100},
                  {"epoch": 2, "val_acc": val_acc, "val_loss": 0.9, "epoch_seconds": 30,
                   "images_per_second": 300}]).to_csv(folder / f"{name}.metrics.csv", index=False)
    if test_acc is not None:
        (folder / f"{name}.test.json").write_text(json.dumps(
            {"run_id": name, "epoch": tested_epoch, "test_acc": test_acc}))


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
