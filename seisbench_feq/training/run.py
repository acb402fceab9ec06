"""One training run (``seisbench-feq train``): :func:`train` with keyword arguments, warm starts and
the exported weights with their records."""

from __future__ import annotations

import datetime
import os
import json
import logging
import subprocess
import time
from pathlib import Path

from .augmentations import PICK_SIGMA
from .distillation import DISTILL_SHARES

logger = logging.getLogger(__name__)

SEISBENCH_REQUIREMENT = "0.10.0"


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if out.returncode != 0:
        return "uncommitted tree (" + (out.stderr.strip().splitlines() or ["git describe failed"])[-1] + ")"
    return out.stdout.strip()


def export_weights(model, weights_dir: str | Path, name: str, metadata: dict, docstring: str) -> tuple[Path, Path]:
    """Save a trained model as ``weights_dir/name.pt.v1`` + ``name.json.v1`` (SeisBench format).

    The model is rebuilt at 6000 input samples on the CPU (weights do not depend on the window
    length), the json gets ``"version": "1"``, a low ``seisbench_requirement`` and ``metadata``.
    """
    import torch

    args = model.get_model_args()
    args["in_samples"] = 6000
    export = type(model)(**args)
    export.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    export = export.cpu().eval()
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    export.save(weights_dir / name, weights_docstring=docstring, version_str="1")
    json_path = weights_dir / f"{name}.json.v1"
    content = json.loads(json_path.read_text())
    content["version"] = "1"
    content["seisbench_requirement"] = SEISBENCH_REQUIREMENT
    content.update(metadata)
    json_path.write_text(json.dumps(content, indent=2, default=str) + "\n")
    with torch.no_grad():  # sanity: the saved file reloads to the same outputs
        reloaded = type(export).load(weights_dir / name, version_str="1").eval()
        x = torch.randn(1, 3, 6000)
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(export(x), reloaded(x)))
    if not same:
        raise RuntimeError(f"exported weights {json_path} do not reload to the trained model")
    return weights_dir / f"{name}.pt.v1", json_path


def save_derived_weights(model, source: str, target: str, note: str) -> None:
    """Save weights derived from the weights at prefix ``source`` (re-initialised heads, an average)
    at prefix ``target``, keeping the source's ``training``, ``history`` and ``data`` records, so
    that a later ``train --init target`` copies them; ``note`` says what was done
    (``training.then``)."""
    target_path = Path(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(target_path, version_str="1")
    records = json.loads(Path(source + ".json.v1").read_text())
    json_path = Path(str(target_path) + ".json.v1")
    content = json.loads(json_path.read_text())
    content.update({key: records[key] for key in ("training", "history", "data") if key in records})
    content.setdefault("training", {})["then"] = note
    json_path.write_text(json.dumps(content, indent=2) + "\n")


def warm_start(model, prefix: str) -> dict:
    """Copy every tensor of the weights file ``prefix`` whose name and shape match ``model``.

    ``prefix`` is a SeisBench weights path without suffix (``DIR/default`` for
    ``DIR/default.pt.v1``). Any of the four models works as a source: FEQ2 can start from FEQ3
    (all but the BiGRU/BiLSTM stack match), FEQ1 from LEQNet. Returns what was copied and skipped.
    """
    import torch

    candidates = [Path(prefix + ".pt.v1"), Path(prefix + ".pt"), Path(prefix)]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"--init {prefix}: none of {[str(c) for c in candidates]} exists")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in source and isinstance(source["state_dict"], dict):  # a Lightning checkpoint
        source = {k.removeprefix("model."): v for k, v in source["state_dict"].items()}
    target = model.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    skipped = sorted(k for k in target if k not in copied)
    if not copied:
        raise ValueError(f"--init {path}: no tensor matches {type(model).__name__} in name and shape")
    target.update(copied)
    model.load_state_dict(target)
    logger.info("warm start from %s: %d tensors copied, %d kept at random init", path, len(copied), len(skipped))
    return {"from": str(path), "tensors_copied": len(copied), "tensors_random": skipped}


def init_history(prefix: str) -> list[dict]:
    """The training records of the weights a run starts from (``--init``), oldest first.

    Each shipped json then carries the whole chain of commands that produced it, not only the
    last one: ``history`` of the init weights, then their own ``training`` record.
    """
    for candidate in (Path(prefix + ".json.v1"), Path(prefix + ".json")):
        if candidate.is_file():
            content = json.loads(candidate.read_text())
            record = content.get("training") or {"note": f"{candidate} has no training record"}
            record = {k: v for k, v in record.items() if k != "history"}
            return list(content.get("history", [])) + [{"weights": str(candidate), **record}]
    return [{"note": f"no json beside {prefix}; its training is not recorded"}]


def _ema_callback(decay: float):
    """Lightning's weight averaging as an exponential moving average of the weights (and buffers).

    Validation, the checkpoints and the exported weights then hold the average: on the short,
    noisy fine-tuning runs here the raw weights swing from epoch to epoch.
    """
    from lightning.pytorch.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    return WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay))


# Every option of train() with its default; the CLI's flags are these names with dashes.
TRAIN_DEFAULTS: dict = {
    "model": "feq3",
    "dataset": None,
    "stead_basepath": None,
    "stead_test_npy": None,
    "distill": False,
    "teacher": "../shared/weights/eqtransformer_original/EqT_original_model.h5",
    "reference_teacher": None,
    "cx_root": None,
    "ncedc_root": None,
    "ncedc_test_fraction": 0.5,
    "split_seed": 0,
    "analyst_weight": 0.5,
    "teacher_targets": "soft",
    "cache_dir": "local/teacher_cache",
    "teacher_grid_shifts": (0,),
    "teacher_grid_rule": "average",
    "mask_ps_conflicts": False,
    "teacher_min_snr": None,
    "physical_augmentations": False,
    "noise_rate": 0.3,
    "real_noise_rate": 0.0,
    "source_shares": DISTILL_SHARES,
    "pick_sigma": PICK_SIGMA,
    "out": "local/runs/train",
    "batch_size": 16,
    "lr": 1e-3,
    "pos_weight": 0.0,
    "in_samples": 6000,
    "highpass": 1.0,
    "steps_per_epoch": 200,
    "max_epochs": 1000,
    "max_steps": 0,
    "max_minutes": 0,
    "patience": 5,
    "select_on": "loss",
    "plateau_patience": 0,
    "ema_decay": 0.0,
    "threads": 1,
    "num_workers": 0,
    "seed": 0,
    "resume": False,
    "init": None,
    "save_weights": None,
    "weights_name": "default",
    "tree_windows": 10000,
}


def train(namespace=None, /, *, command: str | None = None, **options) -> dict:
    """One training run (``seisbench-feq train``); options are the keys of :data:`TRAIN_DEFAULTS`.

    Supervised on ``dataset`` ("stead" or a SeisBench dataset folder) or, with ``distill``, from a
    ``teacher`` on ``cx_root`` continuous data and the NCEDC training stations of ``ncedc_root``.
    ``command`` is recorded in the summary and the weights json (the CLI passes the command line).
    Returns the run summary. An argparse namespace as the first argument is still accepted.
    """
    import types

    import lightning as L
    import seisbench.generate as sbg
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from seisbench.util import worker_seeding
    from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

    from ..baselines import BASELINES, is_detector
    from ..models import MODELS
    from .augmentations import augmentation_pipeline, phase_columns, real_noise_pool
    from .datasets import load_waveform_dataset, supervised_splits
    from .distillation import build_distillation_sources
    from .module import LOSS_WEIGHTS, _lightning_module_class, _pick_f1_callback_class
    from .validation import continuous_validation, validation_pick_windows

    if namespace is not None:
        options = {**{k: v for k, v in vars(namespace).items() if k in TRAIN_DEFAULTS}, **options}
    unknown = sorted(set(options) - set(TRAIN_DEFAULTS))
    if unknown:
        raise TypeError(f"train() got unknown options {unknown}")
    given = dict(options)
    args = types.SimpleNamespace(**{**TRAIN_DEFAULTS, **options})
    args.teacher_grid_shifts = tuple(int(v) for v in args.teacher_grid_shifts)
    if command is None:
        changed = {k: v for k, v in given.items() if v != TRAIN_DEFAULTS[k]}
        command = "seisbench_feq.training.train(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"
    if args.threads:
        torch.set_num_threads(args.threads)
    trainable = {**MODELS, **BASELINES}
    if args.model not in trainable:
        raise ValueError(f"--model {args.model}: expected one of {sorted(trainable)}")
    if args.model == "decision-tree" and args.init:
        raise ValueError("--init: the decision tree is fitted from scratch (no warm start)")
    if not args.distill and not args.dataset:
        raise ValueError("give --dataset (stead or a SeisBench dataset folder) or --distill")
    L.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    model = trainable[args.model](in_samples=args.in_samples, highpass=args.highpass or None)
    detector = is_detector(model)  # detection output only: trains the detection target alone
    init_info = warm_start(model, args.init) if args.init else None

    data_info: dict = {}
    val_windows = None
    tail_validation = None  # the continuous validation tail, for --select-on score
    if not args.pick_sigma >= 1:
        raise ValueError(f"pick_sigma={args.pick_sigma!r}: expected at least 1 sample")
    if not 0 <= args.noise_rate <= 1:
        raise ValueError(f"noise_rate={args.noise_rate!r}: expected a share between 0 and 1")
    if not 0 <= args.ema_decay < 1:
        raise ValueError(f"ema_decay={args.ema_decay!r}: expected 0 (off) or a decay in (0, 1)")
    if not 0 <= args.real_noise_rate <= 1:
        raise ValueError(f"real_noise_rate={args.real_noise_rate!r}: expected a share between 0 and 1")
    if args.real_noise_rate and not args.distill:
        raise ValueError("real_noise_rate: the real noise pool is drawn from the distillation data; give distill")
    unknown = set(args.source_shares) - set(DISTILL_SHARES)
    if unknown or not all(v >= 0 for v in args.source_shares.values()) or not sum(args.source_shares.values()) > 0:
        raise ValueError(f"source_shares={args.source_shares!r}: expected non-negative shares of {sorted(DISTILL_SHARES)}")
    if args.select_on == "score" and not (args.distill and args.cx_root):
        raise ValueError("select_on='score' needs distill with cx_root (the continuous validation tail)")
    if args.distill:
        train_source, weights, val_source, data_info = build_distillation_sources(
            args.teacher,
            args.cx_root,
            args.ncedc_root,
            args.cache_dir,
            in_samples=args.in_samples,
            ncedc_test_fraction=args.ncedc_test_fraction,
            split_seed=args.split_seed,
            teacher_targets=args.teacher_targets,
            grid_shifts=args.teacher_grid_shifts,
            grid_rule=args.teacher_grid_rule,
            mask_conflicts=args.mask_ps_conflicts,
            pick_sigma=args.pick_sigma,
            shares=args.source_shares,
            teacher_min_snr=args.teacher_min_snr,
        )
        phase_dict = {"trace_p_arrival_sample": "P", "trace_s_arrival_sample": "S"}
        noise_pool = real_noise_pool(train_source) if args.real_noise_rate else None
        if noise_pool is not None:
            data_info["real_noise_pieces"] = len(noise_pool)
        train_gen = sbg.GenericGenerator(train_source)
        train_gen.add_augmentations(
            augmentation_pipeline(
                args.in_samples, phase_dict, train=True, teacher_rows=True, window_around_picks=False,
                analyst_weight=args.analyst_weight, physical_augmentations=args.physical_augmentations,
                noise_rate=args.noise_rate, pick_sigma=args.pick_sigma,
                noise_pool=noise_pool, real_noise_rate=args.real_noise_rate,
            )
        )
        if data_info.get("ncedc_val_files") and not detector:  # the pick-F1 callback needs picks
            val_windows = validation_pick_windows(args.ncedc_root, data_info["ncedc_val_files"])
        if args.select_on == "score":
            tail_validation = continuous_validation(
                args.cx_root, args.reference_teacher or args.teacher, cache_dir=args.cache_dir,
                min_samples=args.in_samples,
            )
            data_info["continuous_validation_hours"] = round(tail_validation.hours, 2)
        val_gen = sbg.GenericGenerator(val_source)
        val_gen.add_augmentations(
            augmentation_pipeline(args.in_samples, phase_dict, train=False, teacher_rows=True, pick_sigma=args.pick_sigma)
        )
        sampler = WeightedRandomSampler(weights, num_samples=args.steps_per_epoch * args.batch_size)
    else:
        dataset = load_waveform_dataset(args.dataset, args.stead_basepath, args.stead_test_npy)
        train_ds, dev_ds = supervised_splits(dataset)
        phase_dict = phase_columns(dataset.metadata.columns)
        if not phase_dict:
            raise ValueError(f"dataset {args.dataset} has no trace_<phase>_arrival_sample columns to label")
        train_gen = sbg.GenericGenerator(train_ds)
        train_gen.add_augmentations(
            augmentation_pipeline(
                args.in_samples, phase_dict, train=True, noise_rate=args.noise_rate, pick_sigma=args.pick_sigma
            )
        )
        val_gen = sbg.GenericGenerator(dev_ds)
        val_gen.add_augmentations(
            augmentation_pipeline(args.in_samples, phase_dict, train=False, pick_sigma=args.pick_sigma)
        )
        sampler = RandomSampler(train_gen, replacement=True, num_samples=args.steps_per_epoch * args.batch_size)
        data_info = {
            "dataset": args.dataset,
            "train_traces": len(train_ds),
            "dev_traces": len(dev_ds),
            "phase_columns": phase_dict,
        }
    logger.info("training data: %s", json.dumps(data_info, default=str))
    if args.model == "decision-tree":
        from .trees import fit_decision_tree

        n_windows = args.max_steps * args.batch_size if args.max_steps else args.tree_windows
        tree_sampler = (
            WeightedRandomSampler(weights, num_samples=n_windows) if args.distill
            else RandomSampler(train_gen, replacement=True, num_samples=n_windows)
        )  # fmt: skip
        return fit_decision_tree(model, train_gen, tree_sampler, val_gen, args=args, data_info=data_info, out=out,
                                 command=command, started=started, git=_git_describe())  # fmt: skip

    loader_kwargs = dict(batch_size=args.batch_size, num_workers=args.num_workers, worker_init_fn=worker_seeding)
    train_loader = DataLoader(train_gen, sampler=sampler, **loader_kwargs)
    val_loader = DataLoader(val_gen, shuffle=False, **loader_kwargs)

    module = _lightning_module_class()(
        model, lr=args.lr, pos_weight=args.pos_weight, plateau_patience=args.plateau_patience
    )
    callbacks = []
    if val_windows is not None:
        callbacks.append(
            _pick_f1_callback_class()(*val_windows, batch_size=args.batch_size, continuous=tail_validation)
        )
    if args.ema_decay:
        # After the scoring callback: Lightning calls callbacks in order, and the average must still be
        # swapped in when ValidationPickF1 scores at the end of the validation epoch.
        callbacks.append(_ema_callback(args.ema_decay))
    monitor = "val_loss"
    if val_windows is not None and args.select_on in ("f1", "score"):
        monitor = "val_score" if tail_validation is not None else "val_f1"
    mode = "min" if monitor == "val_loss" else "max"
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best-{epoch}-{" + monitor + ":.4f}",
        monitor=monitor,
        mode=mode,
        save_last=True,
    )
    # checked after each validation: a resumed run (--resume) has no val metric at its first train-epoch end
    stopping = EarlyStopping(monitor=monitor, mode=mode, patience=args.patience, check_on_train_epoch_end=False)
    callbacks += [checkpoint, stopping]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        max_time=datetime.timedelta(minutes=args.max_minutes) if args.max_minutes else None,
        callbacks=callbacks,
        logger=CSVLogger(out, name="logs"),
        log_every_n_steps=max(1, min(10, args.steps_per_epoch)),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=out,
    )
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(
        module,
        train_loader,
        val_loader,
        ckpt_path=str(last) if args.resume and last.exists() else None,
        weights_only=True,  # a checkpoint is data, never code
    )

    best = checkpoint.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    elapsed = time.time() - started
    summary = {
        "best_checkpoint": best,
        "selected_on": monitor,
        "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "wall_minutes": round(elapsed / 60, 2),
        "final_train_loss": float(trainer.callback_metrics["train_loss_epoch"])
        if "train_loss_epoch" in trainer.callback_metrics
        else None,
    }
    commands = []
    previous = out / "summary.json"
    if args.resume and previous.is_file():  # a resumed run: keep the commands that led here
        commands = json.loads(previous.read_text()).get("commands", [])
    commands.append(command)
    summary["commands"] = commands
    if init_info:
        summary["init"] = init_info
    (out / "summary.json").write_text(
        json.dumps({"summary": summary, "commands": commands, "data": data_info}, indent=2, default=str)
    )
    logger.info("finished: %s", summary)

    if args.save_weights:
        metadata = {
            "training": {
                "command": " && ".join(summary["commands"]),
                "git": _git_describe(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{os.cpu_count()}-core CPU, no GPU" if not torch.cuda.is_available() else "GPU",
                "threads": torch.get_num_threads(),
                "recipe": {
                    "loss_weights": list(LOSS_WEIGHTS),
                    "pick_sigma_samples": args.pick_sigma,
                    "detection": "P to S + 0.4 (S - P)",
                    "optimizer": f"Adam lr={args.lr}"
                    + (f", halved after {args.plateau_patience} epochs without progress" if args.plateau_patience else ""),
                    "pos_weight": args.pos_weight,
                    **({"ema_decay": args.ema_decay} if args.ema_decay else {}),
                    "batch_size": args.batch_size,
                    "train_window_samples": args.in_samples,
                    "analyst_weight": args.analyst_weight if args.distill else 1.0,
                    "teacher_targets": args.teacher_targets if args.distill else None,
                    "teacher_grid_shifts": list(args.teacher_grid_shifts) if args.distill else None,
                    **({"teacher_grid_rule": args.teacher_grid_rule} if args.teacher_grid_rule != "average" else {}),
                    **({"mask_ps_conflicts": True} if args.mask_ps_conflicts else {}),
                    **({"teacher_min_snr": args.teacher_min_snr} if args.teacher_min_snr is not None else {}),
                    **({"reference_teacher": args.reference_teacher} if args.reference_teacher else {}),
                    "physical_augmentations": bool(args.physical_augmentations),
                    "noise_rate": args.noise_rate,
                    **({"real_noise_rate": args.real_noise_rate} if args.real_noise_rate else {}),
                    **({"source_shares": args.source_shares} if args.distill else {}),
                },
                **summary,
            },
            "data": data_info,
        }
        if args.model in BASELINES:  # the class is not told apart by its model args alone
            metadata["model_class"] = type(model).__name__
        if args.init:
            metadata["history"] = init_history(args.init)
        docstring = (
            f"{type(model).__name__} trained by seisbench_feq ({'distillation from ' + args.teacher if args.distill else args.dataset}). "
            f"Data: {', '.join(data_info.get('cx_stations', []))} continuous; NCEDC train stations "
            f"{len(data_info.get('ncedc_train_stations', []))}; NCEDC test stations held out. See 'training' and 'data'."
        )
        pt, js = export_weights(model, args.save_weights, args.weights_name, metadata, docstring)
        logger.info("weights written: %s, %s", pt, js)
        print(f"weights: {pt} {js}")
    print(json.dumps(summary, indent=2))
    return summary
