"""Evaluate models on labelled windows: :func:`evaluate_models`, :func:`evaluate_on_ncedc` and the
whole ``seisbench-feq evaluate`` run (:func:`run_evaluation`, keyword arguments only)."""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cache import cached_picks, store_picks, warn_about_pickles
from .pickers import PICK_MODES, TIMING_BATCH, ModelPicker, StaLtaPicker, as_picker, model_thresholds, picks_by_mode
from .scoring import COST_COLUMNS, DEFAULT_THRESHOLDS, PHASES, TOLERANCE_S, _check_inputs, score_picks, score_table

logger = logging.getLogger(__name__)

MODEL_SPEC_HELP = (
    "model specs: stalta (ObsPy baseline) or any spec of seisbench_feq.load_model: feq1 | feq2 | feq3 | leqnet,"
    " the earlier designs cba | eqt-gru | simple-cnn | simple-cnn-flat | decision-tree (shipped weights), NAME:WEIGHTS, PREFIX (a SeisBench .pt/.json pair), eqt-original:PATH.h5 /"
    " leqnet-original:PATH.h5 (Keras originals converted on the fly), PATH.h5, eqtransformer:PREFIX, ..."
)


def load_model_spec(spec: str) -> tuple[str, Any]:
    """``(label, model or picker)`` for a CLI spec: ``stalta`` or any :func:`seisbench_feq.loading.load_model` spec."""
    if spec.lower() == "stalta":
        return "STA/LTA", StaLtaPicker()
    from ..loading import label_of, load_model

    model = load_model(spec)
    return label_of(model), model


def _evaluate(
    models: Mapping[str, Any],
    waveforms: np.ndarray,
    metadata: pd.DataFrame,
    *,
    thresholds: Mapping[str, float] | None,
    tolerance_s: float,
    batch_size: int,
    costs: bool,
    timing_repeats: int,
    progress: bool,
    timing_batch: int = TIMING_BATCH,
    cache_dir: Path | None = None,
    pick_modes: Sequence[str] = ("peak",),
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, pd.DataFrame]], dict[str, tuple[str, ...]]]:
    """Score every model under every pick mode; returns ``(tables, picks, phases)``.

    ``tables[mode]``: one row per model; ``picks[mode][model]``: per-window picks; ``phases[model]``.
    """
    sampling_rate = _check_inputs(waveforms, metadata)
    unknown = [m for m in pick_modes if m not in PICK_MODES]
    if unknown or not pick_modes:
        raise ValueError(f"pick modes {list(pick_modes)}: expected some of {PICK_MODES}")
    metadata = metadata.reset_index(drop=True)
    warn_about_pickles(cache_dir)
    rows: dict[str, dict[str, dict]] = {mode: {} for mode in pick_modes}
    picks: dict[str, dict[str, pd.DataFrame]] = {mode: {} for mode in pick_modes}
    phases_by_model: dict[str, tuple[str, ...]] = {}
    for name, model in models.items():
        picker = as_picker(model, thresholds, batch_size, progress)
        # each model's own thresholds (what its classify uses), overridden by ``thresholds``
        used_thresholds = getattr(picker, "thresholds", {**DEFAULT_THRESHOLDS, **(thresholds or {})})
        found = {mode: cached_picks(cache_dir, name, picker, waveforms, metadata, used_thresholds, mode)
                 for mode in pick_modes}
        missing = [mode for mode, value in found.items() if value is None]
        if missing:
            logger.info("evaluating %s on %d windows (pick modes %s)", name, len(waveforms), ", ".join(missing))
            for mode, value in picks_by_mode(picker, waveforms, missing).items():
                store_picks(cache_dir, name, picker, waveforms, metadata, used_thresholds, mode, value)
                found[mode] = value
        phases = tuple(getattr(picker, "phases", PHASES))
        cost = picker.costs(waveforms, timing_repeats, timing_batch) if costs else {}
        uses_thresholds = isinstance(picker, ModelPicker)
        for mode in pick_modes:
            row = score_picks(found[mode], metadata, tolerance_s, sampling_rate, phases)
            row["pick_mode"] = mode
            row["tolerance_s"] = tolerance_s
            row.update({f"threshold_{k}": (v if uses_thresholds else math.nan) for k, v in used_thresholds.items()})
            row.update(cost)
            # the design's published figure (the authors' own data, not comparable with these windows)
            row["published"] = str(getattr(model, "published", "") or "")
            rows[mode][name] = row
            picks[mode][name] = found[mode]
        phases_by_model[name] = phases
    tables = {}
    for mode in pick_modes:
        table = pd.DataFrame.from_dict(rows[mode], orient="index")
        table.index.name = "model"
        tables[mode] = table
    return tables, picks, phases_by_model


def _thresholds_note(models: Mapping[str, Any], overrides: Mapping[str, float] | None) -> str:
    """The thresholds of the report's rules: each model's own, unless overridden for all."""
    own = {name: model_thresholds(m) for name, m in models.items() if hasattr(m, "annotate_batch_pre")}
    differ = {name: t for name, t in own.items() if t != DEFAULT_THRESHOLDS}
    base = ", ".join(f"{k} {v}" for k, v in DEFAULT_THRESHOLDS.items())
    note = f"{base}, or a model's own (its weights' `default_args`, as its `classify` uses them)"
    if differ:
        note += "; " + "; ".join(f"{name}: " + ", ".join(f"{k} {v:g}" for k, v in t.items()) for name, t in differ.items())
    if overrides:
        note = "for every model " + ", ".join(f"{k} {v}" for k, v in overrides.items()) + f" (given); otherwise {note}"
    return note


def evaluate_models(
    models: Mapping[str, Any],
    waveforms: np.ndarray,
    metadata: pd.DataFrame,
    *,
    thresholds: Mapping[str, float] | None = None,
    tolerance_s: float = TOLERANCE_S,
    batch_size: int = 64,
    costs: bool = True,
    timing_repeats: int = 5,
    timing_batch: int = TIMING_BATCH,
    progress: bool = True,
    return_picks: bool = False,
    pick_mode: str = "peak",
):
    """Score ``models`` (name -> SeisBench ``WaveformModel``, :class:`StaLtaPicker`, or any object
    with ``pick_windows(waveforms) -> DataFrame``) on labelled windows.

    ``waveforms``: (N, 3, samples) float32 counts in the models' component order (ZNE);
    ``metadata``: N rows with ``p_sample`` and ``s_sample`` (analyst picks, samples from the window
    start; NaN = none, e.g. noise windows) and optionally ``sampling_rate`` and ``trace_name``.
    ``pick_mode``: "peak" (SeisBench's rule) or "eqt" (EQTransformer's event-gated rule).

    Returns a DataFrame indexed by model name with ``{detection,P,S}_{tp,fp,fn,missed,wrong,
    precision,recall,f1,max_prob,median_window_max,windows_at_max}``,
    ``{P,S}_{res_mean_s,res_std_s,mae_s,mape_pct}``, the pick mode, thresholds and tolerance and,
    with ``costs``, ``keras_params, torch_params, weights_kb, mflops_per_window, ms_per_window``.
    With ``return_picks`` also a dict name -> per-window picks DataFrame. The rules are in
    :mod:`seisbench_feq.evaluation.scoring`. Use :func:`scores_for_json` to store one row.
    """
    tables, picks, _ = _evaluate(
        models,
        waveforms,
        metadata,
        thresholds=thresholds,
        tolerance_s=tolerance_s,
        batch_size=batch_size,
        costs=costs,
        timing_repeats=timing_repeats,
        progress=progress,
        timing_batch=timing_batch,
        pick_modes=(pick_mode,),
    )
    return (tables[pick_mode], picks[pick_mode]) if return_picks else tables[pick_mode]


def evaluate_on_ncedc(
    models: Mapping[str, Any],
    root: str | Path,
    split: str = "test",
    test_fraction: float = 0.5,
    seed: int = 0,
    offset_seed: int | None = 0,
    **kwargs,
) -> pd.DataFrame:
    """:func:`evaluate_models` on the NCEDC windows of one station split ("test", "train" or "all").

    The windows and the split are those of ``seisbench-feq evaluate --split``:
    :func:`seisbench_feq.data.load_ncedc` with ``offset_seed`` (random sub-sample P positions;
    None: the deterministic positions of the reference results) and
    :func:`seisbench_feq.data.split_by_station`.
    """
    from ..data import load_ncedc, split_by_station

    if split not in ("all", "train", "test"):
        raise ValueError(f"split={split!r}: expected 'all', 'train' or 'test'")
    waveforms, metadata = load_ncedc(root, offset_seed=offset_seed)
    mask = np.ones(len(metadata), bool)
    if split != "all":
        mask = (split_by_station(metadata, test_fraction=test_fraction, seed=seed) == split).to_numpy()
    return evaluate_models(models, waveforms[mask], metadata[mask].reset_index(drop=True), **kwargs)


def machine_description() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()} CPU with {os.cpu_count()} cores{load}, {gpu}, torch {torch.__version__}"


def load_models(specs: Sequence[str], device: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """label -> model (or picker) and label -> spec, in the order given; duplicate labels get the spec."""
    models: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for spec in specs:
        label, model = load_model_spec(spec)
        if label in models:
            label = f"{label} [{spec}]"
        labels[label] = spec
        if hasattr(model, "to") and device:
            model = model.to(device)
        models[label] = model
    return models, labels


PUBLISHED_NOTE = (
    "Published figures of the earlier designs, as their authors report them on their own STEAD subsets:"
    " a different dataset and protocol, not comparable with the scores above."
)


def published_markdown(table: pd.DataFrame) -> str:
    """The ``published`` column of the models that have one, beside this run's F1, as markdown."""
    from .report import markdown_table

    if "published" not in table.columns:
        return ""
    rows = []
    for name, row in table.iterrows():
        if isinstance(row["published"], str) and row["published"]:
            f1 = [("—" if pd.isna(row[f"{t}_f1"]) else f"{row[f'{t}_f1']:.3f}") for t in ("detection", "P", "S")]
            rows.append([name, " / ".join(f1), row["published"]])
    if not rows:
        return ""
    return PUBLISHED_NOTE + "\n\n" + markdown_table(["model", "this run: detection / P / S F1", "published"], rows)


def _suffix(mode: str) -> str:
    return "" if mode == "peak" else f"_{mode}"


def run_evaluation(
    *,
    models: Sequence[str],
    data: str | Path | None = None,
    continuous: Sequence[str | Path] = (),
    out: str | Path = "evaluation",
    split: Sequence[str] = ("all", "test"),
    test_fraction: float = 0.5,
    split_seed: int = 0,
    offset_seed: int | None = 0,
    noise: bool = False,
    limit: int | None = None,
    tolerance_s: float = TOLERANCE_S,
    thresholds: Mapping[str, float] | None = None,
    pick_modes: Sequence[str] = PICK_MODES,
    reference: str | None = None,
    batch_size: int = 64,
    costs: bool = True,
    timing_repeats: int = 5,
    timing_batch: int = TIMING_BATCH,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = True,
    resume: bool = True,
    continuous_reference: str | None = None,
    continuous_seconds: float | None = None,
    continuous_shifts: int = 8,
    continuous_reference_rule: str = "average",
    continuous_noise_block_s: float = 600.0,
    command: str | None = None,
) -> Path:
    """The ``seisbench-feq evaluate`` run: score ``models`` (specs) on the labelled windows of
    ``data`` and/or run the continuous-data check on the folders ``continuous``; writes
    ``out/evaluation.md`` with CSVs and plots and prints the tables. Returns the report path."""
    import torch

    from .report import RULES_MARKDOWN
    from .windows import window_note

    if threads:
        torch.set_num_threads(threads)
    if data is None and not continuous:
        raise ValueError("give labelled windows (data) and/or continuous folders to evaluate on")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    loaded, specs = load_models(models, device)
    machine = machine_description()  # before the run: the load average the timings were taken under
    stalta = StaLtaPicker()
    lines = [
        "# Evaluation report",
        "",
        f"Command: `{command or 'seisbench_feq.evaluation.run_evaluation'}`",
        "",
        f"Machine: {machine}; {torch.get_num_threads()} torch thread(s). Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "Models: " + "; ".join(f"**{label}** = `{spec}`" for label, spec in specs.items()) + ".",
    ]
    printed: list[str] = []
    if data is not None:
        lines += [
            "",
            "## Rules",
            "",
            RULES_MARKDOWN.format(
                windows=window_note(offset_seed),
                thresholds=_thresholds_note(loaded, thresholds),
                tol=tolerance_s,
                stalta_band=f"{stalta.freqmin:g}-{stalta.freqmax:g}",
                sta=stalta.sta_s,
                lta=stalta.lta_s,
                on=stalta.trigger_on,
                off=stalta.trigger_off,
                repeats=timing_repeats,
                batch=timing_batch,
                threads=torch.get_num_threads(),
                machine=machine,
            ),
        ]
        section = _window_sections(
            loaded, data, out, split=split, test_fraction=test_fraction, split_seed=split_seed,
            offset_seed=offset_seed, noise=noise, limit=limit, tolerance_s=tolerance_s, thresholds=thresholds,
            pick_modes=pick_modes, reference=reference, batch_size=batch_size, costs=costs,
            timing_repeats=timing_repeats, timing_batch=timing_batch, progress=progress, resume=resume,
        )  # fmt: skip
        lines += section
        printed += section
    if continuous:
        from .continuous import continuous_check, continuous_markdown

        ref_spec = continuous_reference or next((s for s in specs.values() if s.lower().startswith("eqt-original")), None)
        if ref_spec is None:
            raise ValueError("the continuous check needs a reference model (continuous_reference, e.g. eqt-original:PATH.h5)")
        same = [label for label, spec in specs.items() if spec == ref_spec]
        ref_label, ref_model = (same[0], loaded[same[0]]) if same else load_model_spec(ref_spec)
        pickers = {label: m for label, m in loaded.items() if not isinstance(m, StaLtaPicker)}
        result = continuous_check(
            pickers, ref_model, continuous, reference_label=ref_label, shifts=continuous_shifts,
            max_seconds=continuous_seconds, tolerance_s=tolerance_s, progress=progress,
            reference_rule=continuous_reference_rule, noise_block_s=continuous_noise_block_s,
        )  # fmt: skip
        result.table.to_csv(out / "continuous.csv")
        result.picks.to_csv(out / "continuous_picks.csv", index=False)
        section = ["", "## Continuous data", "", continuous_markdown(result)]
        from .continuous import continuous_file_paths
        from .reference_plot import plot_reference_snr

        light = [label for label in pickers if label.startswith("FEQ3")] or [label for label in pickers if label != ref_label]
        figure = plot_reference_snr(
            result.picks, continuous_file_paths(continuous), out / "continuous_reference_snr.png",
            model=light[0] if light else None,
        )
        if figure is not None:
            section += ["", f"![The reference's P picks by arrival SNR]({figure.name})"]
        lines += section
        printed += section
    report = out / "evaluation.md"
    from ..io.files import atomic_write_text

    atomic_write_text(report, "\n".join(lines) + "\n")
    print("\n".join(printed).strip())
    print(f"\nreport: {report}")
    return report


def _window_sections(
    models, data, out: Path, *, split, test_fraction, split_seed, offset_seed, noise, limit, tolerance_s,
    thresholds, pick_modes, reference, batch_size, costs, timing_repeats, timing_batch, progress, resume,
) -> list[str]:  # fmt: skip
    """Score the labelled windows of ``data``; write CSVs and plots; return the report sections."""
    from ..data import split_by_station
    from .report import plot_residuals, plot_scores, quality_bar_markdown, table_markdown, window_table
    from .scoring import quality_bar
    from .windows import load_labelled_windows

    waveforms, metadata = load_labelled_windows(data, noise=noise, limit=limit, offset_seed=offset_seed)
    metadata = metadata.copy()
    metadata["split"] = split_by_station(metadata, test_fraction=test_fraction, seed=split_seed).to_numpy()
    splits = list(dict.fromkeys(split))
    # Predict once for the windows any requested split needs; score each split from the same picks.
    needed = np.ones(len(metadata), bool) if "all" in splits else metadata["split"].isin(splits).to_numpy()
    w, md = waveforms[needed], metadata[needed].reset_index(drop=True)
    if not len(md):
        raise ValueError(f"no windows in split(s) {splits}")
    tables, picks, phases = _evaluate(
        models, w, md, thresholds=thresholds, tolerance_s=tolerance_s, batch_size=batch_size, costs=costs,
        timing_repeats=timing_repeats, progress=progress, timing_batch=timing_batch,
        cache_dir=out / "cache" if resume else None, pick_modes=tuple(dict.fromkeys(pick_modes)),
    )  # fmt: skip
    sampling_rate = float(md["sampling_rate"].iloc[0]) if "sampling_rate" in md.columns else 100.0
    reference = reference or next((n for n in models if n.startswith("EqT original")), None)
    n_stations = md["station"].nunique() if "station" in md else "?"
    sections = [
        "",
        f"Data: `{data}` — {len(md)} windows of {w.shape[-1]} samples"
        f" ({int(md['p_sample'].notna().sum())} with an analyst P, {int(md['s_sample'].notna().sum())} with S,"
        f" {int(md['p_sample'].isna().sum())} noise), {n_stations} stations. Split by station"
        f" (`seisbench_feq.data.split_by_station`, test_fraction={test_fraction}, seed={split_seed}).",
    ]
    for mode, full in tables.items():
        suffix = _suffix(mode)
        extra = [
            c for c in full.columns
            if c.startswith(("threshold_", "tolerance", "pick_mode")) or c in COST_COLUMNS or c in ("published", "tree_nodes")
        ]  # fmt: skip
        for split_name in splits:
            mask = np.ones(len(md), bool) if split_name == "all" else (md["split"] == split_name).to_numpy()
            if not mask.any():
                logger.warning("split %s has no windows; skipped", split_name)
                continue
            sub_md = md[mask].reset_index(drop=True)
            sub_picks = {name: p[mask].reset_index(drop=True) for name, p in picks[mode].items()}
            if split_name == "all":
                table = full
            else:  # same picks and costs, scored on the split's windows only
                table = score_table(sub_picks, sub_md, tolerance_s, sampling_rate, phases).join(full[extra])
            table.to_csv(out / f"scores_{split_name}{suffix}.csv")
            stem = f"{split_name}{suffix}"
            residual_png = plot_residuals(sub_picks, sub_md, out / f"residuals_{stem}.png", tolerance_s, sampling_rate)
            title = f"split: {split_name} ({mask.sum()} windows), pick mode {mode}"
            scores_png = plot_scores(table, out / f"scores_{stem}.png", title=title)
            section = [
                "",
                f"## Split `{split_name}`: {mask.sum()} windows,"
                f" {sub_md['station'].nunique() if 'station' in sub_md else '?'} stations — pick mode `{mode}`",
                "",
                table_markdown(table, reference),
            ]
            published = published_markdown(table)
            if published:
                section += ["", published]
            if reference and reference in table.index:
                bar = quality_bar_markdown(quality_bar(table, reference), reference)
                section += ["", f"### Quality bar ({split_name}, {mode})", "", bar]
            section += ["", f"![P/R/F1]({scores_png.name})", "", f"![residuals]({residual_png.name})"]
            sections += section
        window_table(picks[mode], md, tolerance_s, sampling_rate).to_csv(out / f"window_picks{suffix}.csv", index=False)
    return sections
