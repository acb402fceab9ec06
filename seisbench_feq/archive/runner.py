"""Running units: in this process or on Dask (a LocalCluster or an existing scheduler)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import time
import uuid

from .plan import UnitResult, parse_time
from .unit import process_unit

logger = logging.getLogger("seisbench_feq.archive")


#: Station-days of work per worker below which a job stays in-process: a LocalCluster takes about
#: 8 s to start and stop on 2 cores, about a third of FEQ3's picking time of one station-day.
MIN_STATION_DAYS_PER_WORKER = 1.0


def choose_parallelism(workers: int | None, torch_threads: int | None, scheduler: str | None,
                       cores: int | None = None, omp: str | None = None,
                       station_days: float | None = None) -> tuple[int, int]:
    """``(workers, torch threads per unit)`` with workers x threads <= cores.

    Defaults, measured on an idle 2-core machine (``benchmarks/bench_archive.py``, FEQ3, 8
    station-days in 16 units): in-process with one torch thread 181.8 s, one Dask worker 218.2 s,
    two workers with one thread each 121.6 s (cluster start and stop included). So a job starts
    one worker process per core, each with one torch thread, when it has at least
    ``MIN_STATION_DAYS_PER_WORKER`` of data per worker (``station_days``, the units to run);
    smaller jobs, and jobs whose size is not given on <= 2 cores, run in-process.
    ``OMP_NUM_THREADS`` sets the threads per unit when given.
    """
    cores = max(1, cores or os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS") if omp is None else omp
    try:
        omp_threads = max(1, int(omp)) if omp else None
    except ValueError:
        omp_threads = None
    if scheduler:  # remote workers: one torch thread per Dask thread unless told otherwise
        return workers or 0, torch_threads or omp_threads or 1
    threads = min(torch_threads or omp_threads or 1, cores)
    if workers is None:
        workers = max(1, cores // threads)
        if station_days is not None:
            workers = min(workers, int(station_days / MIN_STATION_DAYS_PER_WORKER))
        elif cores <= 2:
            workers = 0
        if workers <= 1:
            workers = 0  # one worker process gains nothing over picking in-process
    elif workers >= 1 and torch_threads is None and omp_threads is None:
        threads = max(1, cores // workers)
    if max(workers, 1) * threads > cores:
        logger.warning("%d worker(s) x %d torch thread(s) is more than the %d cores: the threads "
                       "will compete for them", max(workers, 1), threads, cores)
    return workers, threads


class ShippedModel:
    """A model as pickled bytes, unpickled once per worker process.

    Dask serialises ``nn.Module`` objects field by field, which fails on the weak references
    inside PyTorch's RNN modules (FEQ/LEQNet/EQTransformer all have some); ordinary pickling
    goes through ``RNNBase.__getstate__`` and works. cloudpickle also ships classes defined in
    a user's ``__main__`` script.
    """

    _cache: dict[str, object] = {}  # per process: payload digest -> model

    def __init__(self, model):
        try:
            import cloudpickle as pickler
        except ImportError:  # pragma: no cover - cloudpickle comes with dask
            import pickle as pickler
        self.payload = pickler.dumps(model)
        self.digest = hashlib.sha256(self.payload).hexdigest()

    def get(self):
        import pickle

        model = self._cache.get(self.digest)
        if model is None:
            model = pickle.loads(self.payload).eval()
            self._cache.clear()  # one job's model at a time
            self._cache[self.digest] = model
        return model


def log_result(result: UnitResult) -> None:
    picks = ", ".join(f"{n} {p}" for p, n in result.picks.items()) or "no picks"
    where = f"{result.station} {result.start[:19]}"
    if result.status == "done":
        logger.info("%s done: %s, %.2f data-h in %.1f s%s", where, picks,
                    result.data_seconds / 3600, result.elapsed_s,
                    "".join(f"\n    note: {n}" for n in result.notes))
        for error in result.errors:
            logger.error("%s done with errors: %s", where, error)
    elif result.status == "skipped":
        logger.warning("%s skipped: %s", where, result.reason)
    else:
        logger.error("%s FAILED: %s", where, result.reason)


def run_units(todo, source, model, settings, out, manifest, workers, scheduler, progress,
              timing) -> list[UnitResult]:
    from tqdm.auto import tqdm

    from ..io.sources import MiniSEEDSource

    results: list[UnitResult] = []
    bar = tqdm(total=len(todo), unit="unit", desc="picking", disable=not progress or not todo)
    started = time.perf_counter()

    def finish(result: UnitResult):
        manifest.record(result)
        results.append(result)
        log_result(result)
        hours = sum(r.data_seconds for r in results) / 3600
        bar.set_postfix_str(f"{hours / max(time.perf_counter() - started, 1e-9):.2f} data-h/s")
        bar.update(1)

    def unit_source(unit):
        if not isinstance(source, MiniSEEDSource):
            return source
        # generous bounds: the unit reads at most one pad (plus one grid step) beyond its chunk
        margin = settings.pad_s + settings.grid_step_s
        return source.subset(unit.station, parse_time(unit.start) - margin,
                             parse_time(unit.end) + margin)

    try:
        if scheduler is None and workers == 0:
            for unit in todo:
                finish(process_unit(unit, unit_source(unit), model, settings, out))
        elif todo:
            _run_on_dask(todo, unit_source, model, settings, out, workers, scheduler, finish,
                         timing)
    finally:
        bar.close()
    return results


def _run_on_dask(todo, unit_source, model, settings, out, workers, scheduler, finish,
                 timing) -> None:
    from distributed import Client, LocalCluster, as_completed

    # Dask logs every worker start and stop at INFO; keep them for --verbose only
    dask_logger = logging.getLogger("distributed")
    dask_level = dask_logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        dask_logger.setLevel(logging.WARNING)
    cluster = None
    started = time.perf_counter()
    if scheduler:
        client = Client(scheduler)
    else:
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536; glibc then hands every freed
        # block above 64 KiB back to the OS, and picking a unit took twice as long (measured
        # with FEQ3). None removes it from the workers' environment.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        client = Client(cluster)
        # The cluster may return before every worker process has registered; warming up (and
        # then scheduling on) only those present left the others idle for the whole job.
        client.wait_for_workers(workers, timeout=300)
    logger.info("Dask: %s, %d worker thread(s), %d torch thread(s) per task",
                getattr(client.scheduler, "address", scheduler), sum(client.nthreads().values()),
                settings.torch_threads or 1)
    try:
        model_future = client.scatter(ShippedModel(model), broadcast=True)
        # load the model (and torch, SeisBench) on every worker before timing the units
        client.gather([client.submit(_warm_up, model_future, workers=[address], pure=False,
                                     allow_other_workers=False)
                       for address in client.nthreads()])
        timing["cluster_start_s"] = time.perf_counter() - started
        # bounded number of tasks in flight: the scheduler never holds the whole archive's plan
        in_flight = max(2, 2 * sum(client.nthreads().values()))
        pending = iter(todo)
        units_of = {}

        def submit(unit):
            future = client.submit(process_unit, unit, unit_source(unit), model_future, settings,
                                   str(out), key=f"pick-{uuid.uuid4().hex}", pure=False)
            units_of[future.key] = unit
            return future

        queue = as_completed([submit(u) for _, u in zip(range(in_flight), pending)])
        for future in queue:
            unit = units_of.pop(future.key)
            try:
                result = future.result()
            except Exception as exc:  # e.g. the worker died (out of memory): a failed unit
                result = UnitResult(unit.station, unit.start, unit.end, status="failed",
                                    reason=f"Dask task failed: {type(exc).__name__}: {exc}")
            finish(result)
            future.release()
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(submit(nxt))
    finally:
        stopping = time.perf_counter()
        client.close()
        if cluster is not None:
            cluster.close()
        timing["cluster_stop_s"] = time.perf_counter() - stopping
        dask_logger.setLevel(dask_level)


def _warm_up(model: ShippedModel) -> str:
    model.get()
    return f"{socket.gethostname()}:{os.getpid()}"


def with_threads(settings, threads: int):
    return dataclasses.replace(settings, torch_threads=threads)
