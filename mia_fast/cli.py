"""Command line: a thin layer over the public API. Bad input ends with one line and exit status 1."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import sys
from pathlib import Path

import click
import torch

from .attacks.registry import ATTACKS
from .checkpoint import SUFFIX, checkpoint_file, data_hash, load_substitute, save_substitute
from .data import DATASETS, describe
from .defenses import AEPPT, COMBINATIONS, create_defense, defense_names, describe_defenses, load_defense, parse_param
from .defenses.perturbation import DISTANCES, FALLBACKS, GENERATORS, LABEL_REFERENCES
from .defenses.keyed import new_key
from .errors import InputError, MiaFastError
from .evaluation import EXPERIMENTS
from .io import as_tensor, atomic_path, load_array
from .pipeline import (Config, RunDir, deploy_defense, format_results, resolve_defense, run_demo, stage_attack,
                       stage_target)
from .training.substitute import train_substitute


def _one_line_errors(fn):
    """Turn expected failures (bad files, bad values) into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MiaFastError, ValueError, OSError) as err:
            raise click.ClickException(" ".join(str(err).split()) or type(err).__name__) from None

    return wrapper


def _engine_options(fn):
    """--ray / --ray-address: the command's independent work units (shadow models, batches) run as Ray tasks;
    the command gets ``engine`` and Ray is stopped again when it ends."""

    @functools.wraps(fn)
    def wrapper(*args, ray, ray_address, **kwargs):
        from .distributed import create_engine

        with create_engine(ray=ray, address=ray_address) as engine:
            return fn(*args, engine=engine, **kwargs)

    wrapper = click.option("--ray-address", metavar="ADDRESS", help="Run them on the Ray cluster at ADDRESS "
                           "(auto: the one this machine belongs to).")(wrapper)
    return click.option("--ray", is_flag=True, help="Run the independent work (shadow models; defend: batches) as "
                        "tasks on a local Ray instance started for this command (pip install 'mia-fast[ray]'); "
                        "the results are the same.")(wrapper)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine")
    return torch.device(name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mia-fast")
def main():
    """mia-fast: defend ML models against membership inference, and measure the defense."""


def _param_pairs(pairs, *, prefixed: bool) -> dict:
    """--param values: KEY=VALUE (prefixed: DEFENSE.KEY=VALUE) -> {defense or None: {key: text}}."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--param {pair!r}: expected {'DEFENSE.' if prefixed else ''}KEY=VALUE")
        name, dot, key = key.rpartition(".") if prefixed else ("", "", key)
        if prefixed and not dot:
            raise InputError(f"--param {pair!r}: name the defense, as in memguard.budget=0.5")
        out.setdefault(name or None, {})[key] = value
    return out


def _typed(name: str, raw: dict) -> dict:
    return {key: parse_param(name, key, value) for key, value in raw.items()}


def _defense_params(defense, params):
    """The typed ``--param KEY=VALUE`` pairs of a command's one ``--defense`` (None without one)."""
    raw = _param_pairs(params, prefixed=False).get(None, {})
    if raw and defense is None:
        raise InputError("--param needs --defense")
    return _typed(defense, raw) if defense else None


@main.command("defenses")
def defenses_cmd():
    """Every registered defense with its hyperparameters and their defaults."""
    for name, kind, doc, defaults in describe_defenses():
        click.echo(f"{name:15s} {kind:8s} {doc}")
        click.echo(f"{'':24s} " + (", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(no hyperparameters)"))
    for name, parts in COMBINATIONS.items():
        click.echo(f"{name:15s} {'both':8s} {' + '.join(parts)} (combine any two as TRAINING+OUTPUT)")


@main.command()
@click.option("--predictions", "-p", required=True, type=click.Path(dir_okay=False), help="Confidence vectors [N, C], .npy or .pt.")
@click.option("--defense", type=click.Choice(defense_names("output")), help="Output defense (default aeppt; see: "
              "mia-fast defenses).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A hyperparameter of the defense (repeat).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False),
              help="A run directory: fit what the defense needs there (cached); AEPPT takes the run's MIM and eps.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="A fitted defense (a run's defenses/*/defense.safetensors).")
@click.option("--mim", type=click.Path(dir_okay=False), help="AEPPT: substitute MIM checkpoint (train-substitute).")
@click.option("--eps", type=float, help="AEPPT: step size (paper: 9e-4 CIFAR-100, 2e-5 Purchase-100); default: RUN's.")
@click.option("--iters", type=click.IntRange(min=0), help="AEPPT: iterations T (default 100, or RUN's).")
@click.option("--batch", default=4096, show_default=True, type=click.IntRange(min=1), help="Rows per defense call.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Defended vectors, .npy or .pt.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the defense's randomness (batch k "
              "draws from the named stream (seed, defend, k)).")
@click.option("--preserve-label", is_flag=True, help="AEPPT: never change the argmax.")
@click.option("--stop-when-flipped", is_flag=True, help="AEPPT: stop a sample once I' crossed 0.5.")
@click.option("--renormalize", is_flag=True, help="AEPPT: make each output sum to 1 again.")
@click.option("--allow-unnormalized", is_flag=True, help="Accept rows that do not sum to 1.")
@click.option("--precision", type=click.Choice(["fp32", "3xtf32"]),
              help="AEPPT: 3xtf32 = tensor-core products on CUDA (experimental, about fp32 accuracy).")
@click.option("--algorithm", type=click.Choice(["events", "dense"]),
              help="AEPPT: events = incremental forward passes (default on CPU), dense = a full pass every "
                   "iteration (default on CUDA).")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the summary as JSON.")
@_one_line_errors
@_engine_options
def defend(predictions, defense, params, run_dir, checkpoint, mim, eps, iters, batch, out, device, seed,
           preserve_label, stop_when_flipped, renormalize, allow_unnormalized, precision, algorithm, json_out, engine):
    """Defend a file of confidence vectors with any output defense (default AEPPT, Xue et al. Algorithm 1),
    streamed in batches and written atomically."""
    from .defenses.streaming import defend_file

    raw = _param_pairs(params, prefixed=False).get(None, {})
    aeppt_flags = {"eps": eps, "iters": iters, "precision": precision, "algorithm": algorithm,
                   "preserve_label": preserve_label or None,
                   "stop_when_flipped": stop_when_flipped or None, "renormalize": renormalize or None}
    set_flags = {k: v for k, v in aeppt_flags.items() if v is not None}
    if checkpoint and (raw or set_flags or mim or run_dir):
        raise InputError("--checkpoint holds a fitted defense with its hyperparameters: drop --run, --mim, "
                         "--param and the AEPPT options")
    given = _typed(defense or "aeppt", raw)
    if (defense or "aeppt") != "aeppt" and (set_flags or mim):
        first = next(iter(set_flags), "mim")
        raise InputError(f"--{first.replace('_', '-')} is an AEPPT option; for {defense} use --param KEY=VALUE")
    given.update(set_flags)
    dev = _device(device)
    if given.get("precision", "fp32") != "fp32" and dev.type != "cuda":
        raise InputError(f"--precision {given['precision']} runs on CUDA tensor cores; add --device cuda")
    if given.get("algorithm") == "events" and given.get("precision", "fp32") != "fp32":
        raise InputError(f"--algorithm events runs in fp32; drop --precision {given['precision']} or use "
                         "--algorithm dense")
    if checkpoint:
        chosen = load_defense(checkpoint)
        if defense is not None and chosen.name != defense:
            raise InputError(f"--checkpoint {checkpoint} holds a {chosen.name} defense, not {defense}")
    elif (defense or "aeppt") == "aeppt":
        run = RunDir(run_dir) if run_dir is not None else None
        given = {**(AEPPT.run_defaults(run.config().resolved()) if run else {}), **given}
        mim = mim or (checkpoint_file(run.path, "substitute") if run else None)
        if mim is None or given.get("eps") is None:
            raise InputError("defend needs --mim and --eps, or --run RUN_DIR to take them from a run")
        if given["eps"] < 0:
            raise InputError(f"--eps must be >= 0, got {given['eps']}")
        key = new_key(seed) if given.get("keyed") else None  # a keyed AEPPT from --mim: its key from --seed
        chosen = AEPPT.from_substitute(load_substitute(mim)[0], query_key=key, **given)
    elif run_dir is not None:
        run = RunDir(run_dir)
        chosen, _, _ = deploy_defense(run, resolve_defense(defense, given, run.config()),
                                      log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty())
    else:
        chosen = create_defense(defense, **given)
        if not chosen.fitted:
            raise InputError(f"{defense} must be fitted first: pass --run RUN_DIR (fits it there) or --checkpoint")
    summary = defend_file(chosen, predictions, out, batch=batch, device=dev, seed=seed,
                          allow_unnormalized=allow_unnormalized, progress=sys.stderr.isatty(), engine=engine)
    click.echo(f"defended {summary['n']} predictions ({summary['classes']} classes) with {chosen!r} -> {out}")
    rates = "  ".join(f"{k[:-5].replace('_', ' ')} {v:.1%}" for k, v in summary.items() if k.endswith("_rate"))
    click.echo(f"  mean L1 {summary['mean_l1']:.4g}  max L1 {summary['max_l1']:.4g}  label flips "
               f"{summary['label_flips']}  {rates}".rstrip())
    click.echo(f"  {summary['predictions_per_s']:.0f} predictions/s on {device} ({summary['seconds']:.2f} s)")
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
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.safetensors).")
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
    if Path(out).suffix.lower() != SUFFIX:
        raise InputError(f"--out {out}: checkpoints are written as {SUFFIX} files")
    save_substitute(out, model, meta)
    click.echo(f"substitute MIM ({model.num_classes} classes) trained on {meta['members']} members and "
               f"{meta['nonmembers']} non-members: train accuracy {history['train_accuracy']:.1%} -> {out}")


def _target_options(fn):
    """The data, split and target-training options of every command that trains a target."""
    options = [
        click.option("--dataset", default="digits", show_default=True, type=click.Choice(list(DATASETS)),
                     help="digits is embedded; the others read their published files (see: mia-fast data list)."),
        click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset's files are."),
        click.option("--members", type=click.IntRange(min=2), help="|D_tar| (default: the dataset's)."),
        click.option("--nonmembers", type=click.IntRange(min=2), help="|D_tar-bar| (default: the dataset's)."),
        click.option("--adversary-fraction", default=0.5, show_default=True, type=float),
        click.option("--target-epochs", type=click.IntRange(min=1), help="Default: the dataset's, else 100."),
        click.option("--target-lr", type=float, help="Default: the dataset's, else 1e-4."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--classes", type=click.IntRange(min=2), help="Merge the classes into this many "
                     "(label mod N; Table 5's class sweep)."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="auto: CUDA when available."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _experiment_options(fn):
    """`_target_options` and AEPPT's (the substitute MIM's epochs, the step size eps, iterations T)."""
    for option in reversed([
        click.option("--mim-epochs", default=100, show_default=True, type=click.IntRange(min=1)),
        click.option("--eps", type=float, help="AEPPT step size (default: the dataset's)."),
        click.option("--iters", default=100, show_default=True, type=click.IntRange(min=0)),
    ]):
        fn = option(fn)
    return _target_options(fn)


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


@contextlib.contextmanager
def _removed_on_failure(run_dir, force):
    """The checked ``--run-dir``; if it did not exist before and the body fails (an error or Ctrl-C), it
    is removed, so nothing half-made is left behind."""
    path = _fresh_run_dir(run_dir, force)
    fresh = not path.exists()
    try:
        yield path
    except BaseException:
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        raise


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
@click.option("--defense", type=click.Choice(defense_names("training")),
              help="Train with this training defense (see: mia-fast defenses).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A hyperparameter of the defense (repeat).")
@_one_line_errors
@_engine_options
def train_target_cmd(run_dir, force, defense, params, engine, **kwargs):
    """Split the data and train the target model (cross-entropy, Adam, or a training defense) into a run
    directory."""
    given = _defense_params(defense, params)
    if defense:
        create_defense(defense, **given)  # bad hyperparameters fail before the run directory is made
    cfg = dataclasses.replace(_config(kwargs), training_defense=defense, training_params=given)
    with _removed_on_failure(run_dir, force) as path:
        stage_target(RunDir(path, create=True), cfg, log=click.echo, progress=sys.stderr.isatty(), engine=engine)


@main.command("protect-data")
@_target_options
@click.option("--eps", type=float, help="Distance threshold (default: 100 per 784 dimensions, in --distance's unit; "
              "the paper's MNIST thresholds are 50-200).")
@click.option("--generator", default="fgsm", show_default=True, type=click.Choice(sorted(GENERATORS)),
              help="Perturbation generator (Bai et al. sec. 5.1).")
@click.option("--generator-param", "generator_params", multiple=True, metavar="KEY=VALUE",
              help="A hyperparameter of the generator, e.g. epochs=2 for advgan (repeat).")
@click.option("--alpha", default=1.0, show_default=True, type=float, help="Perturbation rate: the share of records "
              "perturbed, in (0, 1].")
@click.option("--rounds", default=3, show_default=True, type=int, help="Rounds m of generation and feedback.")
@click.option("--candidates", default=8, show_default=True, type=int, help="Candidates K per record and round.")
@click.option("--simulators", default=5, show_default=True, type=int, help="Models of the simulator.")
@click.option("--simulator-epochs", type=int, help="Epochs of each simulator model (default: the target's).")
@click.option("--strength", default=0.25, show_default=True, type=float,
              help="Starting floor of the perturbation, as a fraction of the eps radius.")
@click.option("--distance", default="squared-l2", show_default=True, type=click.Choice(list(DISTANCES)),
              help="Unit of --eps.")
@click.option("--fallback", default="original", show_default=True, type=click.Choice(list(FALLBACKS)),
              help="A record with no candidate within eps keeps its original, or its previous pick.")
@click.option("--label-reference", default="simulator", show_default=True, type=click.Choice(list(LABEL_REFERENCES)),
              help="Eq. 2 keeps the simulator's label of the original, or its true label.")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Directory to write the upload to.")
@click.option("--force", is_flag=True, help="Overwrite an existing directory.")
@_one_line_errors
@_engine_options
def protect_data_cmd(eps, generator, generator_params, alpha, rounds, candidates, simulators, simulator_epochs,
                     strength, distance, fallback, label_reference, run_dir, force, engine, **kwargs):
    """Input perturbation (Bai et al. 2021, Algorithm 1): write the perturbed training set a data owner
    uploads instead of D_tar (protected_x.npy, protected_y.npy), a per-record report (records.csv), the
    leakage before and after (protection.json) and originals beside their copies (protected.png)."""
    from .pipeline import stage_protect

    defense = create_defense("input-perturbation", generator=generator, generator_params=" ".join(generator_params),
                             eps=eps, alpha=alpha, rounds=rounds, candidates=candidates, simulators=simulators,
                             simulator_epochs=simulator_epochs, strength=strength, distance=distance,
                             fallback=fallback, label_reference=label_reference)
    cfg = _config(kwargs)
    with _removed_on_failure(run_dir, force) as path:
        summary = stage_protect(path, cfg, defense, log=click.echo, progress=sys.stderr.isatty(), engine=engine)
    before, after = summary["before"], summary["after"]
    click.echo(f"uploaded {summary['records']} records: {summary['perturbed']} perturbed, {summary['fallbacks']} kept "
               f"their original (no candidate within eps {summary['eps']:g} kept the label); mean distance "
               f"{summary['mean_distance']:.4g} ({summary['seconds']:.0f} s)")
    click.echo(f"simulated leakage: evaluator accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, simulator "
               f"train/test {before['train_accuracy']:.3f}/{before['test_accuracy']:.3f} -> "
               f"{after['train_accuracy']:.3f}/{after['test_accuracy']:.3f}")
    click.echo(f"written: {path}/protected_x.npy, protected_y.npy, records.csv, protected.png, protection.json")


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A run directory: its target answers /v1/predict.")
@click.option("--defense", type=click.Choice(defense_names("output")),
              help="Output defense on every answer (fitted on the run, cached there); default: none.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A hyperparameter of the defense (repeat).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests that share one call of the target and the defense.")
@click.option("--max-wait-ms", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="How long the first request of a batch waits for others.")
@click.option("--max-queue", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Requests waiting at most; more are refused with 503.")
@click.option("--max-body-bytes", default=8 << 20, show_default=True, type=click.IntRange(min=1),
              help="Larger request bodies are refused with 413.")
@_one_line_errors
def serve(run_dir, defense, params, host, port, max_batch, max_wait_ms, max_queue, max_body_bytes):
    """Serve the run's target behind an output defense over HTTP: POST /v1/predict (features) and
    /v1/defend (probabilities), GET /healthz and /metrics; concurrent requests are micro-batched."""
    try:
        import uvicorn

        from .serving import Service, create_app
    except ImportError as err:
        raise InputError(f"serve needs FastAPI and uvicorn: pip install 'mia-fast[serve]' ({err})") from None
    service = Service.from_run(run_dir, defense, _defense_params(defense, params), log=click.echo)
    app = create_app(service, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                     max_body_bytes=max_body_bytes)
    click.echo(f"serving {run_dir} ({defense or 'no defense'}) on http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="A run directory: its target.")
@click.option("--defense", type=click.Choice(defense_names("output")),
              help="Output defense in the graph (fitted on the run, cached there); default: none.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A hyperparameter of the defense (repeat).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="AOTInductor package (.pt2).")
@_one_line_errors
def export_cmd(run_dir, defense, params, out):
    """Export the run's target + softmax + output defense as one graph (torch.export) compiled into an
    AOTInductor package; load it with torch._inductor.aoti_load_package(OUT). A randomized defense (aeppt,
    hamp-output, memguard) takes its draws as a second input: uniforms [B, n] in [0, 1), fresh per answer."""
    from .serving import Service
    from .serving.export import check_exportable, export_defended

    if defense:
        check_exportable(create_defense(defense, **_defense_params(defense, params)))
    service = Service.from_run(run_dir, defense, _defense_params(defense, params),
                               log=lambda m: click.echo(m, err=True))
    example = torch.zeros(2, *service.feature_shape)
    path = export_defended(service.target, service.defense, example, out)
    inputs = f"features [B, {', '.join(map(str, service.feature_shape))}]"
    if service.defense is not None and service.defense.randomized:
        inputs += f", uniforms [B, {service.defense.uniforms_per_answer}] in [0, 1)"
    click.echo(f"exported {defense or 'the undefended target'} -> {path} (inputs: {inputs})")


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
        click.option("--boundary-directions", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Random flip orders / directions per record of the boundary attack."),
    ]):
        fn = option(fn)
    return fn


def _options(kwargs):
    from .evaluation.threat import Options

    return Options(epochs=kwargs["epochs"], shadows=kwargs["shadows"], queries=kwargs["queries"],
                   noisy_copies=kwargs["noisy_copies"], noise=kwargs["noise"],
                   boundary_directions=kwargs["boundary_directions"])


def _names(text, known, what):
    names = [a.strip() for a in text.split(",") if a.strip()] if text else None
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise InputError(f"--{what}s: unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    return names


def _attack_names(text):
    return _names(text, list(ATTACKS), "attack")


def _defense_option(fn):
    fn = click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                      help="A hyperparameter of the defense (repeat).")(fn)
    return click.option("--defense", default="aeppt", show_default=True, type=click.Choice(defense_names("output")),
                        help="The output defense to attack (see: mia-fast defenses).")(fn)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_defense_option
@click.option("--attacks", default=None, help="Comma-separated subset of the attacks (default: all; see "
              "`mia-fast attack --help`).")
@click.option("--no-adaptive", is_flag=True, help="Skip the adaptive attacks (rounding, averaging, and the "
              "defense's own: AEPPT's flip and adversarial training).")
@click.option("--no-sweep", is_flag=True, help="Skip the defense's diagnostics (AEPPT: step-size sweep, loss curve).")
@_attacker_options
@_one_line_errors
@_engine_options
def evaluate(run_dir, defense, params, attacks, no_adaptive, no_sweep, engine, **kwargs):
    """Attack a run without the defense, naively against it, and defense-aware; adaptive attacks, the
    defense's diagnostics; writes evaluation.json, evaluation.md, a self-contained evaluation.html and PNG
    figures."""
    from .evaluation.battery import evaluate_run, format_evaluation

    given = _typed(defense, _param_pairs(params, prefixed=False).get(None, {}))
    ev = evaluate_run(run_dir, defense=defense, params=given, attacks=_attack_names(attacks),
                      adaptive=not no_adaptive, sweep=not no_sweep, options=_options(kwargs),
                      log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty(), engine=engine)
    click.echo(format_evaluation(ev))
    click.echo(f"report: {Path(run_dir) / 'evaluation.html'} and evaluation.md ({ev['seconds']:.0f} s; numbers in "
               "evaluation.json)")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--defenses", "defense_list", default=",".join(defense_names("output")), show_default=True,
              help="Comma-separated defenses: output defenses, training defenses (their targets are trained "
              "once, in RUN_DIR/targets/), TRAINING+OUTPUT combinations, hamp (HAMP's training and output); "
              "a part may carry its own hyperparameters: dp-sgd[epsilon=50;max_grad_norm=2].")
@click.option("--param", "params", multiple=True, metavar="DEFENSE.KEY=VALUE",
              help="A hyperparameter of one defense, e.g. memguard.budget=0.5 (repeat).")
@click.option("--attacks", default=None, help="Comma-separated subset of the attacks (default: all).")
@click.option("--no-adaptive", is_flag=True, help="Skip the adaptive attacks.")
@click.option("--fresh", is_flag=True, help="Evaluate every point again instead of reading the ones already "
              "done (RUN/compare/) for the same attacks and options.")
@_attacker_options
@_one_line_errors
@_engine_options
def compare(run_dir, defense_list, params, attacks, no_adaptive, fresh, engine, **kwargs):
    """Run the battery against several defenses on one run and put them side by side: compare.json,
    compare.md, a self-contained compare.html and the privacy-utility figure compare.png."""
    from .evaluation.compare import compare_run, format_comparison

    names = [a.strip() for a in defense_list.split(",") if a.strip()]
    typed = {name: _typed(name, values) for name, values in _param_pairs(params, prefixed=True).items()}
    cmp = compare_run(run_dir, names, params=typed, attacks=_attack_names(attacks), adaptive=not no_adaptive,
                      options=_options(kwargs), log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty(),
                      fresh=fresh, engine=engine)
    click.echo(format_comparison(cmp))
    click.echo(f"report: {Path(run_dir) / 'compare.html'} and compare.md, figure compare.png "
               f"({cmp['seconds']:.0f} s; numbers in compare.json)")


def _attack_help():
    return "\n".join(f"{name:18s}{spec.description}" for name, spec in ATTACKS.items())


@main.command(help="Run one attack NAME on a run, in three settings (no defense, naive, defense-aware).\n\n\b\n"
              + _attack_help())
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("name")
@_defense_option
@_attacker_options
@click.option("--json-out", type=click.Path(dir_okay=False), help="Write the metrics as JSON.")
@_one_line_errors
@_engine_options
def attack(run_dir, name, defense, params, json_out, engine, **kwargs):
    from .evaluation.battery import run_attack
    from .evaluation.threat import Deployment, ThreatModel

    if len(_attack_names(name) or []) != 1:
        raise InputError(f"NAME: one attack, got {name!r} (evaluate runs several)")
    threat = ThreatModel(run_dir, _options(kwargs), log=lambda m: click.echo(m, err=True),
                         progress=sys.stderr.isatty(), engine=engine)
    deployment = Deployment(threat, defense, _typed(defense, _param_pairs(params, prefixed=False).get(None, {})))
    results, _ = run_attack(threat, name, deployment)
    for metrics in results.values():
        for key in [k for k in metrics if k.startswith("per_class_")]:
            del metrics[key]
    click.echo(f"{'':10s}{'accuracy':>10s}{'precision':>11s}{'recall':>8s}{'AUC':>8s}{'AUC corr.':>10s}"
               f"{'TPR@1%FPR':>11s}")
    for setting, m in results.items():
        click.echo(f"{setting:10s}{m['accuracy']:10.3f}{m['precision']:11.3f}{m['recall']:8.3f}{m['auc']:8.3f}"
                   f"{m['auc_correct']:10.3f}{m['tpr_at_1%_fpr']:11.3f}")
    if json_out:
        with atomic_path(Path(json_out)) as tmp:
            tmp.write_text(json.dumps({"attack": name, "run": str(run_dir), "defense": defense, **results}, indent=2))


@main.command()
@click.argument("experiment", type=click.Choice(EXPERIMENTS))
@_experiment_options
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="Default: runs/DATASET-seedSEED-EXPERIMENT (or -2, -3, ... if taken).")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1),
              help="Epochs of the neural-network attacks.")
@click.option("--queries", default=8, show_default=True, type=click.IntRange(min=1),
              help="Repeated queries of the averaging attack (adaptive).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="bai-*: a hyperparameter of every input-perturbation setting (see: mia-fast defenses), e.g. "
              "generator_params=epochs=2 or simulators=3 (repeat).")
@_one_line_errors
@_engine_options
def reproduce(experiment, run_dir, force, epochs, queries, params, engine, **kwargs):
    """Run a named experiment of the AEPPT paper and print it beside the paper's numbers (CIFAR-100,
    Purchase-100): table2, step-size (Tables 3-4), adversary (Fig. 7), mims (Tables 6-7), adaptive (Table 8),
    classes (Table 5, classes merged as label mod k), comparison (Fig. 9 with dropout and adversarial
    regularization, and Bai et al.'s Table 3 rows for min-max and DP-SGD). Or one of Bai et al.'s (input
    perturbation; MNIST rows beside Fashion-MNIST): bai-table2, bai-table3, bai-generators (Figs. 4-5),
    bai-distance (Fig. 6), bai-rate (Fig. 7)."""
    from .evaluation.reproduce import reproduce as run_experiment
    from .evaluation.threat import Options

    given = _typed("input-perturbation", _param_pairs(params, prefixed=False).get(None, {}))
    if given and not experiment.startswith("bai-"):
        raise InputError("--param sets input-perturbation hyperparameters of the bai-* experiments")
    create_defense("input-perturbation", **{"generator": "advgan", **given})  # bad values fail before anything runs
    cfg = _config(kwargs)
    path = (_fresh_run_dir(run_dir, force) if run_dir
            else _next_free(Path("runs") / f"{cfg.dataset}-seed{cfg.seed}-{experiment}"))
    lines, _ = run_experiment(experiment, cfg, path, options=Options(epochs=epochs, queries=queries),
                              log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty(), params=given,
                              engine=engine)
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
