"""Command line: a thin layer over the public API. Bad input ends with one line and exit status 1."""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import data_hash, load_substitute, save_substitute
from .defenses.aeppt import aeppt
from .errors import InputError, MiaFastError
from .data import describe
from .io import as_tensor, atomic_path, load_array
from .pipeline import Config, RunDir, format_results, run_demo, stage_attack, stage_target
from .training.substitute import train_substitute
from .validation import check_probabilities


def _one_line_errors(fn):
    """Turn expected failures (bad files, bad values) into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MiaFastError, ValueError, OSError) as err:
            raise click.ClickException(" ".join(str(err).split()) or type(err).__name__) from None

    return wrapper


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine")
    return torch.device(name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mia-fast")
def main():
    """mia-fast: defend ML models against membership inference, and measure the defense."""


@main.command()
@click.option("--predictions", "-p", required=True, type=click.Path(dir_okay=False), help="Confidence vectors [N, C], .npy or .pt.")
@click.option("--mim", type=click.Path(dir_okay=False), help="Substitute MIM checkpoint (train-substitute); default: RUN's.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="A run directory (demo): its substitute MIM and eps.")
@click.option("--eps", type=float, help="Step size (paper: 9e-4 CIFAR-100, 2e-5 Purchase-100); default: RUN's.")
@click.option("--iters", default=100, show_default=True, type=click.IntRange(min=0), help="Iterations T.")
@click.option("--batch", default=4096, show_default=True, type=click.IntRange(min=1), help="Rows per kernel call.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Defended vectors, .npy or .pt.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random step sizes.")
@click.option("--preserve-label", is_flag=True, help="Never change the argmax.")
@click.option("--stop-when-flipped", is_flag=True, help="Stop a sample once I' crossed 0.5.")
@click.option("--renormalize", is_flag=True, help="Make each output sum to 1 again.")
@click.option("--allow-unnormalized", is_flag=True, help="Accept rows that do not sum to 1.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "3xtf32"]),
              help="3xtf32: tensor-core products on CUDA (experimental, about fp32 accuracy).")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the summary as JSON.")
@_one_line_errors
def defend(predictions, mim, run_dir, eps, iters, batch, out, device, seed, preserve_label, stop_when_flipped,
           renormalize, allow_unnormalized, precision, json_out):
    """Turn confidence vectors into AEPPT adversarial predictions (Xue et al., Algorithm 1)."""
    if run_dir is not None:
        run = RunDir(run_dir)
        mim = mim or str(run.path / "substitute.pt")
        eps = eps if eps is not None else run.config().step_size()
    if mim is None or eps is None:
        raise InputError("defend needs --mim and --eps, or --run RUN_DIR to take them from a run")
    if eps < 0:
        raise InputError(f"--eps must be >= 0, got {eps}")
    dev = _device(device)
    if precision != "fp32" and dev.type != "cuda":
        raise InputError(f"--precision {precision} runs on CUDA tensor cores; add --device cuda")
    model, _ = load_substitute(mim)
    folded = model.fold().to(dev)
    data = load_array(predictions, what="predictions", mmap=True)
    if data.ndim != 2:
        raise InputError(f"predictions {predictions}: expected a 2-D [N, C] array, got shape {tuple(data.shape)}")
    n, c = data.shape
    if n == 0:
        raise InputError(f"predictions {predictions}: empty input, shape {tuple(data.shape)}")
    if c != folded.num_classes:
        raise InputError(f"predictions {predictions}: has {c} classes but the membership model {mim} expects {folded.num_classes}")
    out_path = Path(out)
    if out_path.suffix.lower() not in (".npy", ".pt"):
        raise InputError(f"--out {out}: unsupported file type {out_path.suffix or '(none)'}; use .npy or .pt")
    gen = torch.Generator().manual_seed(seed)
    l1_sum, l1_max, flips, decision_flips = 0.0, 0.0, 0, 0
    kept = []
    started = time.perf_counter()
    with atomic_path(out_path) as tmp:
        sink = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, c)) if out_path.suffix.lower() == ".npy" else None
        for start in tqdm(range(0, n, batch), desc="defend", unit="batch", disable=None, leave=False):
            part = as_tensor(data[start:start + batch])
            if not part.is_floating_point():
                raise InputError(f"predictions {predictions}: expected float probabilities, got dtype {part.dtype}")
            check_probabilities(part, num_classes=c, allow_unnormalized=allow_unnormalized, name="predictions",
                                row_offset=start)
            res = aeppt(part.to(dev), folded, eps, iters, generator=gen, preserve_label=preserve_label,
                        stop_when_flipped=stop_when_flipped, renormalize=renormalize, chunk_size=batch,
                        check_inputs=False, precision=precision)
            adv = res.adversarial.cpu()
            if sink is not None:
                sink[start:start + len(adv)] = adv.numpy()
            else:
                kept.append(adv)
            l1_sum += float(res.l1.sum())
            l1_max = max(l1_max, float(res.l1.max()))
            flips += int(res.label_changed.sum())
            decision_flips += int(res.decision_flipped.sum())
        if sink is not None:
            sink.flush()
            del sink
        else:
            torch.save(torch.cat(kept), tmp)
    elapsed = time.perf_counter() - started
    summary = {"n": n, "classes": c, "eps": eps, "iters": iters, "device": device, "precision": precision, "seed": seed,
               "mean_l1": l1_sum / n, "max_l1": l1_max, "label_flips": flips,
               "decision_flip_rate": decision_flips / n, "seconds": elapsed, "predictions_per_s": n / elapsed}
    click.echo(f"defended {n} predictions ({c} classes) -> {out}")
    click.echo(f"  mean L1 {summary['mean_l1']:.4g}  max L1 {l1_max:.4g}  label flips {flips}  "
               f"I' decisions flipped {summary['decision_flip_rate']:.1%}")
    click.echo(f"  {summary['predictions_per_s']:.0f} predictions/s on {device} ({elapsed:.2f} s)")
    if json_out:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2))


def _labels(path, what):
    return as_tensor(load_array(path, what=what)).reshape(-1)


@main.command("train-substitute")
@click.option("--members", required=True, type=click.Path(dir_okay=False), help="Target outputs on members [N, C].")
@click.option("--member-labels", required=True, type=click.Path(dir_okay=False), help="True labels of members [N].")
@click.option("--nonmembers", required=True, type=click.Path(dir_okay=False), help="Target outputs on non-members [M, C].")
@click.option("--nonmember-labels", required=True, type=click.Path(dir_okay=False), help="True labels of non-members [M].")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pt).")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@_one_line_errors
def train_substitute_cmd(members, member_labels, nonmembers, nonmember_labels, out, epochs, lr, batch_size, seed,
                         device):
    """Train the defender's substitute MIM (AEPPT sec. 4.3) and save it with metadata."""
    arrays = []
    for path, what in [(members, "members"), (nonmembers, "nonmembers")]:
        t = as_tensor(load_array(path, what=what))
        if not t.is_floating_point():
            raise InputError(f"{what} {path}: expected float probabilities, got dtype {t.dtype}")
        arrays.append(t.float())
    m_lab = _labels(member_labels, "member labels")
    n_lab = _labels(nonmember_labels, "non-member labels")
    model, history = train_substitute(arrays[0], m_lab, arrays[1], n_lab, epochs=epochs, lr=lr, batch_size=batch_size,
                                      seed=seed, device=device, progress=sys.stderr.isatty())
    meta = {"num_classes": model.num_classes, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
            "members": len(arrays[0]), "nonmembers": len(arrays[1]),
            "training_data_sha256": data_hash([arrays[0], m_lab, arrays[1], n_lab]),
            "train_accuracy": history["train_accuracy"], "final_loss": history["loss"][-1]}
    if Path(out).suffix.lower() != ".pt":
        raise InputError(f"--out {out}: checkpoints are written as .pt")
    save_substitute(out, model, meta)
    click.echo(f"substitute MIM ({model.num_classes} classes) trained on {meta['members']} members and "
               f"{meta['nonmembers']} non-members: train accuracy {history['train_accuracy']:.1%} -> {out}")


def _experiment_options(fn):
    options = [
        click.option("--dataset", default="digits", show_default=True, help="digits (embedded), location30, "
                     "purchase100, texas100, cifar10, cifar100, mnist, fashion-mnist (see: mia-fast data list)."),
        click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset's files are."),
        click.option("--members", type=click.IntRange(min=2), help="|D_tar| (default: the dataset's)."),
        click.option("--nonmembers", type=click.IntRange(min=2), help="|D_tar-bar| (default: the dataset's)."),
        click.option("--adversary-fraction", default=0.5, show_default=True, type=float),
        click.option("--target-epochs", type=click.IntRange(min=1), help="Default: the dataset's, else 100."),
        click.option("--target-lr", type=float, help="Default: the dataset's, else 1e-4."),
        click.option("--mim-epochs", default=100, show_default=True, type=click.IntRange(min=1)),
        click.option("--eps", type=float, help="AEPPT step size (default: the dataset's)."),
        click.option("--iters", default=100, show_default=True, type=click.IntRange(min=0)),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--classes", type=click.IntRange(min=2), help="Merge the classes into this many "
                     "(label mod N; Table 5's class sweep)."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="auto: CUDA when available."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(kwargs) -> Config:
    if kwargs["device"] == "auto":
        kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    _device(kwargs["device"])
    return Config(**kwargs)


def _fresh_run_dir(run_dir, force):
    path = Path(run_dir)
    if path.exists() and any(path.iterdir()) and not force:
        raise InputError(f"--run-dir {path} exists and is not empty (pass --force to overwrite)")
    return path


def _next_free(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


@main.command()
@_experiment_options
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Default: runs/DATASET-seedSEED (or -2, -3, ... if taken).")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@_one_line_errors
def demo(run_dir, force, **kwargs):
    """The whole AEPPT experiment: target, substitute MIM, adversary MIM0, defense, results table."""
    cfg = _config(kwargs)
    path = _fresh_run_dir(run_dir, force) if run_dir else _next_free(Path("runs") / f"{cfg.dataset}-seed{cfg.seed}")
    results = run_demo(cfg, path, log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty())
    click.echo(format_results(results))
    click.echo(f"run directory: {path} (results.json, checkpoints, outputs); {results['total_seconds']:.0f} s")


@main.command("train-target")
@_experiment_options
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@_one_line_errors
def train_target_cmd(run_dir, force, **kwargs):
    """Split the data and train the target model (cross-entropy, Adam) into a run directory."""
    cfg = _config(kwargs)
    run = RunDir(_fresh_run_dir(run_dir, force), create=True)
    stage_target(run, cfg, log=click.echo, progress=sys.stderr.isatty())


@main.command("train-attack")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="A run made by train-target.")
@_one_line_errors
def train_attack_cmd(run_dir):
    """Train the adversary's MIM0 on its known share of members and non-members of a run."""
    run = RunDir(run_dir)
    stage_attack(run, run.config(), log=click.echo, progress=sys.stderr.isatty())


def _attacker_options(fn):
    for option in reversed([
        click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1),
                     help="Epochs of the neural-network attacks."),
        click.option("--shadows", default=6, show_default=True, type=click.IntRange(min=0),
                     help="Shadow models (LiRA, Shokri, metric thresholds, aware calibration); 0: leave "
                     "those attacks out."),
        click.option("--queries", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Repeated queries of the averaging attack."),
        click.option("--noisy-copies", default=20, show_default=True, type=click.IntRange(min=1),
                     help="Noisy queries per record of the robustness attack."),
        click.option("--noise", type=click.FloatRange(min=0), help="Noise of the robustness attack (bit-flip "
                     "probability for binary features, Gaussian sigma otherwise); default 0.02 / 0.05."),
    ]):
        fn = option(fn)
    return fn


def _options(kwargs):
    from .evaluation.battery import Options

    return Options(epochs=kwargs["epochs"], shadows=kwargs["shadows"], queries=kwargs["queries"],
                   noisy_copies=kwargs["noisy_copies"], noise=kwargs["noise"])


def _attack_names(text):
    from .evaluation.battery import ATTACKS

    names = [a.strip() for a in text.split(",") if a.strip()] if text else None
    unknown = [n for n in names or [] if n not in ATTACKS]
    if unknown:
        raise InputError(f"--attacks: unknown attack {unknown[0]!r}; known: {', '.join(ATTACKS)}")
    return names


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--attacks", default=None, help="Comma-separated subset of the attacks (default: all; see "
              "`mia-fast attack --help`).")
@click.option("--no-adaptive", is_flag=True, help="Skip the adaptive attacks (flip, rounding, adversarial "
              "training, averaging).")
@click.option("--no-sweep", is_flag=True, help="Skip the step-size sweep and the loss-curve figure.")
@_attacker_options
@_one_line_errors
def evaluate(run_dir, attacks, no_adaptive, no_sweep, **kwargs):
    """Attack a demo run without the defense, naively against AEPPT, and defense-aware; adaptive attacks,
    step-size sweep; writes evaluation.json, evaluation.md, a self-contained evaluation.html and PNG figures."""
    from .evaluation.battery import evaluate_run, format_evaluation

    ev = evaluate_run(run_dir, attacks=_attack_names(attacks), adaptive=not no_adaptive, sweep=not no_sweep,
                      options=_options(kwargs), log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty())
    click.echo(format_evaluation(ev))
    click.echo(f"report: {Path(run_dir) / 'evaluation.html'} and evaluation.md ({ev['seconds']:.0f} s; numbers in "
               "evaluation.json)")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("name")
@_attacker_options
@click.option("--json-out", type=click.Path(dir_okay=False), help="Write the metrics as JSON.")
@_one_line_errors
def attack(run_dir, name, json_out, **kwargs):
    """Run one attack NAME on a demo run, in the three settings (no defense, naive, defense-aware).

    \b
    gap               label-only: member iff correctly classified
    confidence        true-class confidence, per-class thresholds from shadow models
    entropy           prediction entropy, per-class thresholds from shadow models
    modified_entropy  Song & Mittal's modified entropy, per-class thresholds
    mim0, mim1, mim2  the paper's attack networks (sec. 5.2, Table 6)
    mim3              MIM0 with non-members from another distribution
    shokri            per-class attack networks trained on shadow models
    lira              offline LiRA (per-record Gaussians from shadow models)
    robustness        label-only: share of noisy queries still labelled correctly
    """
    from .evaluation.battery import Battery, run_attack

    if len(_attack_names(name) or []) != 1:
        raise InputError(f"NAME: one attack, got {name!r} (evaluate runs several)")
    results, _, _ = run_attack(Battery(run_dir, _options(kwargs), log=lambda m: click.echo(m, err=True),
                                       progress=sys.stderr.isatty()), name)
    for metrics in results.values():
        for key in [k for k in metrics if k.startswith("per_class_")]:
            del metrics[key]
    click.echo(f"{'':10s}{'accuracy':>10s}{'precision':>11s}{'recall':>8s}{'AUC':>8s}{'TPR@1%FPR':>11s}")
    for setting, m in results.items():
        click.echo(f"{setting:10s}{m['accuracy']:10.3f}{m['precision']:11.3f}{m['recall']:8.3f}{m['auc']:8.3f}"
                   f"{m['tpr_at_1%_fpr']:11.3f}")
    if json_out:
        with atomic_path(Path(json_out)) as tmp:
            tmp.write_text(json.dumps({"attack": name, "run": str(run_dir), **results}, indent=2))


@main.command()
@click.argument("experiment", type=click.Choice(["table2", "step-size", "adversary", "mims", "adaptive", "classes"]))
@_experiment_options
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Default: runs/DATASET-seedSEED-EXPERIMENT (or -2, -3, ... if taken).")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1),
              help="Epochs of the neural-network attacks.")
@click.option("--queries", default=8, show_default=True, type=click.IntRange(min=1),
              help="Repeated queries of the averaging attack (adaptive).")
@_one_line_errors
def reproduce(experiment, run_dir, force, epochs, queries, **kwargs):
    """Run a named experiment of the AEPPT paper and print it beside the paper's numbers (CIFAR-100,
    Purchase-100): table2, step-size (Tables 3-4), adversary (Fig. 7), mims (Tables 6-7), adaptive (Table 8),
    classes (Table 5, classes merged as label mod k)."""
    from .evaluation.battery import Options
    from .evaluation.reproduce import reproduce as run_experiment

    cfg = _config(kwargs)
    path = (_fresh_run_dir(run_dir, force) if run_dir
            else _next_free(Path("runs") / f"{cfg.dataset}-seed{cfg.seed}-{experiment}"))
    lines, _ = run_experiment(experiment, cfg, path, options=Options(epochs=epochs, queries=queries),
                              log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty())
    click.echo("\n".join(lines))
    click.echo(f"run directory: {path} (reproduce-{experiment}.json)")


@main.group()
def data():
    """Datasets: where they are looked for."""


@data.command("list")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Also look here.")
def data_list(data_dir):
    """Every dataset, where it was looked for, and whether it was found."""
    for row in describe(data_dir):
        status = f"found: {row['found']}" if row["found"] else "not found"
        click.echo(f"{row['name']:14s} {row['classes']:4d} classes  {status}")
        click.echo(f"{'':14s} {row['description']}; looked in: {', '.join(row['looked_in']) or '(nowhere: --data-dir or MIA_FAST_DATA)'}")


if __name__ == "__main__":  # pragma: no cover
    main()
