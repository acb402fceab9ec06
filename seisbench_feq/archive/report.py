"""The end of a job: merged pick/detection tables, report.json, report.md and the summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..io.files import atomic_write_text
from .manifest import write_json
from .plan import iso

logger = logging.getLogger("seisbench_feq.archive")


@dataclass
class ArchiveReport:
    """What :func:`pick_archive` returns (also written as ``report.json`` / ``report.md``)."""

    out: Path
    summary: dict

    @property
    def exit_code(self) -> int:
        """0 when every unit is done or skipped, every input file was readable and no unit
        decoded garbage; else 1."""
        s = self.summary
        return 0 if not (s["failed"] or s["input_problems"] or s.get("done_with_errors")) else 1

    @property
    def picks_path(self) -> Path:
        return self.out / self.summary["outputs"]["picks"]

    def picks(self):
        """The merged picks (the full pick table, also after ``output_format="quakeflow"``)."""
        from ..io.picks import read_picks

        return read_picks(self.out / self.summary["outputs"].get("picks_table",
                                                                 self.summary["outputs"]["picks"]))


def _unit_file(out: Path, entry: dict, name: str) -> Path | None:
    for rel in entry.get("outputs", []):
        if f".{name}." in Path(rel).name:
            return out / rel
    return None


def merge_and_report(out, units, manifest, settings, run, source, run_results, timing, span,
                     selected, missing_requested, without_data) -> dict:
    import pandas as pd

    from ..io.picks import empty_picks, read_picks, write_picks
    from .unit import read_detections, write_detections

    fmt = settings.output_format
    suffix = "parquet" if fmt == "parquet" else "csv"
    wall = timing["wall_s"]
    entries = [manifest.entries.get(u.key) for u in units]
    done = [e for e in entries if e and e["status"] == "done"]
    skipped = [e for e in entries if e and e["status"] == "skipped"]
    failed = [e for e in entries if e and e["status"] == "failed"]
    with_errors = [e for e in done if e.get("errors")]
    this_run = {r.key for r in run_results}

    frames = [read_picks(p) for e in done if (p := _unit_file(out, e, "picks")) is not None]
    frames = [f for f in frames if len(f)]
    picks = pd.concat(frames, ignore_index=True) if frames else empty_picks()
    outputs = {"picks": f"picks.{suffix}"}
    if fmt == "quakeflow":  # the full table stays beside the QuakeFlow columns
        outputs = {"picks": "picks.quakeflow.csv", "picks_table": "picks.csv"}
        write_picks(picks, out / outputs["picks_table"], format="csv")
    write_picks(picks, out / outputs["picks"], format=fmt)
    if settings.detections:
        frames = [read_detections(p) for e in done
                  if (p := _unit_file(out, e, "detections")) is not None]
        frames = [f for f in frames if len(f)]
        if frames:
            dets = pd.concat(frames, ignore_index=True)
        else:
            from seisbench.util import DetectionList

            from .unit import detections_frame

            dets = detections_frame(DetectionList(), settings, None, None)
        outputs["detections"] = f"detections.{suffix}"
        write_detections(dets, out / outputs["detections"], suffix)

    picks_per_station: dict[str, dict[str, int]] = {s: {} for s in selected}
    for entry in done:
        counts = picks_per_station.setdefault(entry["station"], {})
        for phase, n in entry["picks"].items():
            counts[phase] = counts.get(phase, 0) + n
    ran = [r for r in run_results if r.status == "done"]
    data_h_run = sum(r.data_seconds for r in ran) / 3600
    summary = {
        "archive": source.describe(),
        "model": run["model"], "weights": run["weights"],
        "span": [iso(span[0]), iso(span[1])],
        "stations": selected,
        "requested_stations_without_data": missing_requested,
        "settings": {k: run[k] for k in ("chunk_s", "classify_span_s", "pad_s", "grid_step_s",
                                          "channel_priority", "classify_kwargs", "output_format",
                                          "detections")},
        "units": {
            "total": len(units), "done": len(done), "skipped": len(skipped),
            "failed": len(failed), "not_run": sum(e is None for e in entries),
            "done_with_errors": len(with_errors),
            "processed_this_run": len(this_run),
            "finished_in_earlier_runs": sum(1 for e in done + skipped if e["key"] not in this_run),
        },
        "data_hours": sum(e["data_seconds"] for e in done) / 3600,
        "picks_total": sum(sum(c.values()) for c in picks_per_station.values()),
        "picks_per_station": picks_per_station,
        "throughput": {
            # wall_s includes starting and stopping Dask (loading the model on the workers
            # included) but not the file scan
            "wall_s": wall, "cluster_start_s": timing["cluster_start_s"],
            "cluster_stop_s": timing["cluster_stop_s"],
            # the parallelism this run used (0 workers = in-process)
            "workers": timing.get("workers"), "torch_threads": timing.get("torch_threads"),
            "units_this_run": len(run_results), "data_hours_this_run": data_h_run,
            "data_hours_per_s": data_h_run / wall if wall > 0 and ran else 0.0,
            "unit_seconds_total": sum(r.elapsed_s for r in run_results),
        },
        "skipped": [_brief(e) for e in skipped],
        # chunks that no input file covers are not planned as units; counted here per station
        "chunks_without_data": without_data,
        "failed": [_brief(e) for e in failed],
        "done_with_errors": [{**_brief(e), "errors": e["errors"]} for e in with_errors],
        "warnings": [{**_brief(e), "notes": e["notes"]} for e in done if e["notes"]],
        "repairs": list(manifest.repairs),
        "input_problems": source.problems(),
        "outputs": {**outputs, "report": "report.md", "manifest": "manifest.jsonl"},
    }
    write_json(out / "report.json", summary)
    atomic_write_text(out / "report.md", report_markdown(summary))
    return summary


def _brief(entry: dict) -> dict:
    return {"station": entry["station"], "start": entry["start"], "end": entry["end"],
            "reason": entry["reason"]}


def log_summary(summary: dict, out: Path, exit_code: int) -> None:
    """The job's last lines: what was skipped or repaired, and why (the report has the rest)."""
    u = summary["units"]
    for title, items in (("skipped", summary["skipped"]), ("failed", summary["failed"])):
        reasons: dict[str, int] = {}
        for e in items:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            logger.warning("summary: %d unit(s) %s: %s", n, title, reason)
    for e in summary.get("done_with_errors", []):
        logger.error("summary: %s %s done with errors: %s", e["station"], e["start"][:19],
                     "; ".join(e["errors"]))
    for p in summary["input_problems"]:
        logger.error("summary: input file %s not used: %s", p["file"], p["reason"])
    for repair in summary.get("repairs", []):
        logger.warning("summary: repaired: %s", repair)
    notes = sum(len(w["notes"]) for w in summary["warnings"])
    if notes:
        logger.info("summary: %d note(s) on %d unit(s) (gaps, resampling, missing components...) "
                    "in %s", notes, len(summary["warnings"]), out / "report.md")
    level = logging.INFO if exit_code == 0 else logging.ERROR
    logger.log(level, "finished: %d done (%d with errors), %d skipped, %d failed, %d unreadable "
               "input files; report %s", u["done"], u["done_with_errors"], u["skipped"],
               u["failed"], len(summary["input_problems"]), out / "report.md")


def report_markdown(s: dict) -> str:
    u, t = s["units"], s["throughput"]
    lines = [
        "# Archive picking report", "",
        f"- archive: {s['archive']}",
        f"- model: {s['model']}, weights: {s['weights']}",
        f"- span: {s['span'][0]} - {s['span'][1]}, stations: {', '.join(s['stations'])}",
        f"- units: {u['total']} total, {u['done']} done ({u['done_with_errors']} with errors), "
        f"{u['skipped']} skipped, {u['failed']} failed, {u['not_run']} not run "
        f"({u['finished_in_earlier_runs']} finished in earlier runs); "
        f"{sum(s['chunks_without_data'].values())} chunks without input data",
        f"- data hours picked: {s['data_hours']:.2f}; picks: {s['picks_total']}",
        f"- this run: {t['units_this_run']} units, {t['data_hours_this_run']:.2f} data hours in "
        f"{t['wall_s']:.1f} s ({t['data_hours_per_s']:.3f} data-h/s)",
        "", "## Picks per station", "", "| station | P | S | other |", "|---|---|---|---|",
    ]
    for station, counts in s["picks_per_station"].items():
        other = sum(n for p, n in counts.items() if p not in ("P", "S"))
        lines.append(f"| {station} | {counts.get('P', 0)} | {counts.get('S', 0)} | {other} |")
    for title, key in (("Failed units", "failed"), ("Skipped units", "skipped")):
        lines += ["", f"## {title} ({len(s[key])})", ""]
        lines += [f"- {e['station']} {e['start']} - {e['end']}: {e['reason']}" for e in s[key]]
    lines += ["", f"## Units done with errors ({len(s['done_with_errors'])})", ""]
    for e in s["done_with_errors"]:
        lines += [f"- {e['station']} {e['start']} - {e['end']}:"] + [f"    - {x}" for x in e["errors"]]
    n_empty = sum(s["chunks_without_data"].values())
    lines += ["", f"## Chunks without any input data, not run ({n_empty})", ""]
    lines += [f"- {station}: {n} chunk(s)" for station, n in s["chunks_without_data"].items()]
    lines += ["", f"## Units with warnings ({len(s['warnings'])})", ""]
    for e in s["warnings"]:
        lines.append(f"- {e['station']} {e['start']} - {e['end']}:")
        lines += [f"    - {n}" for n in e["notes"]]
    lines += ["", f"## Repairs on resume ({len(s['repairs'])})", ""]
    lines += [f"- {r}" for r in s["repairs"]]
    lines += ["", f"## Unreadable input files ({len(s['input_problems'])})", ""]
    lines += [f"- {p['file']}: {p['reason']}" for p in s["input_problems"]]
    if s["requested_stations_without_data"]:
        lines += ["", "## Requested stations not in the archive", "",
                  *[f"- {p}" for p in s["requested_stations_without_data"]]]
    return "\n".join(lines) + "\n"
