"""Wall time of training one target with each training defense, side by side in one run, on the README's
Location-30 split (D_tar = 1,500 records, the paper's [1024, 512, 256] Tanh MLP, Adam, 100 epochs at
lr 1e-4; DP-SGD at its own lr 1e-3) or, without Location-30's files, on digits (100 records).

    python bench/bench_training_defenses.py [--data-dir ../shared/datasets/location] [--out bench/training.json]

Prints one row per defense: seconds, train and test accuracy, and DP-SGD's epsilon; the attacker's
shadow models take as long each (the aware attacker trains 6 of them with the same defense).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mia_fast.data import make_splits
from mia_fast.defenses import create_defense, defense_names
from mia_fast.models import TARGETS, target_for
from mia_fast.pipeline import Config, load_run_dataset, outside_records
from mia_fast.training import accuracy, train_model

POINTS = [(None, {})] + [(name, {}) for name in defense_names("training")] + [("dp-sgd", {"epsilon": 50.0})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dataset = "location30" if args.data_dir else "digits"
    cfg = Config(dataset=dataset, data_dir=args.data_dir).resolved()
    ds = load_run_dataset(cfg)
    splits = make_splits(len(ds), members=cfg.members, nonmembers=cfg.nonmembers, seed=0)
    x_in, y_in = torch.from_numpy(ds.x[splits.members]), torch.from_numpy(ds.y[splits.members])
    x_out, y_out = torch.from_numpy(ds.x[splits.nonmembers]), torch.from_numpy(ds.y[splits.nonmembers])
    rows = outside_records(len(ds), splits, len(splits.members), 0)
    reference = (torch.from_numpy(ds.x[rows]), torch.from_numpy(ds.y[rows]))
    name, kwargs = target_for(ds.kind, ds.x.shape[1:], ds.num_classes)
    results = []
    print(f"{dataset}: {len(y_in)} training records, {cfg.target_epochs} epochs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'defense':26s}{'seconds':>9s}{'train acc':>11s}{'test acc':>10s}{'epsilon':>9s}")
    for defense_name, params in POINTS:
        defense = create_defense(defense_name, **params) if defense_name else None
        torch.manual_seed(0)
        model = TARGETS[name](**(defense.architecture(kwargs) if defense else kwargs))
        started = time.perf_counter()
        history = train_model(model, x_in, y_in, defense=defense, reference=reference, epochs=cfg.target_epochs,
                              lr=cfg.target_lr, seed=0)
        seconds = time.perf_counter() - started
        label = repr(defense) if params else (defense_name or "none")
        row = {"defense": label, "seconds": seconds, "train_accuracy": accuracy(model, x_in, y_in),
               "test_accuracy": accuracy(model, x_out, y_out), "epsilon": history.get("epsilon")}
        results.append(row)
        eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        print(f"{(defense_name or 'none') + (' ' + str(params) if params else ''):26s}{seconds:9.1f}"
              f"{row['train_accuracy']:11.1%}{row['test_accuracy']:10.1%}{eps:>9s}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d"), "dataset": dataset, "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
