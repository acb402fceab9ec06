"""Training targets and augmentations as ``seisbench.generate`` steps: the EqT/LEQNet recipe.

Gaussian pick labels (sigma 10 samples), a detection box from P to S + 0.4 (S - P), teacher rows
carried through the window steps, and the augmentations: random window shift, second event,
Gaussian or real noise, channel drop, gaps and, optionally, the physically valid ones (time stretch,
polarity flip, rotation of the horizontals).
"""

from __future__ import annotations

import numpy as np

PICK_SIGMA = 10  # samples, Gaussian pick labels
DETECTION_FACTOR = 1.4  # detection box from P to S + 0.4 (S - P)


def phase_columns(columns) -> dict[str, str]:
    """``trace_<phase>_arrival_sample`` columns mapped to "P" or "S" by the phase's first letter."""
    mapping = {}
    for col in columns:
        if col.startswith("trace_") and col.endswith("_arrival_sample"):
            phase = col[len("trace_") : -len("_arrival_sample")]
            if phase[:1].upper() in ("P", "S"):
                mapping[col] = phase[:1].upper()
    return mapping


class SplitTeacher:
    """Split stacked rows (waveform + teacher probabilities) after windowing.

    Teacher probabilities travel as extra rows of ``X`` through the window steps, so the same
    random crop applies to both; afterwards rows ``n_components:`` move to ``teacher_key``.
    """

    def __init__(self, n_components: int = 3, key: str = "X", teacher_key: str = "teacher"):
        self.n_components = n_components
        self.key = key
        self.teacher_key = teacher_key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        state_dict[self.key] = (x[: self.n_components], metadata)
        state_dict[self.teacher_key] = (x[self.n_components :], None)

    def __str__(self):
        return f"SplitTeacher(n_components={self.n_components})"


class AnalystTargets:
    """Analyst labels as (3, W) detection, P, S: SeisBench's Gaussian and detection labellers.

    Rows whose metadata has ``analyst_labels`` False (e.g. unlabelled continuous data) get NaN:
    "unknown", which the loss ignores, rather than "no event".
    """

    def __init__(self, phase_dict: dict[str, str], sigma: int = PICK_SIGMA, factor: float = DETECTION_FACTOR):
        import seisbench.generate as sbg

        self.phase_dict = phase_dict
        self.sigma, self.factor = sigma, factor
        p_cols = [c for c, p in phase_dict.items() if p == "P"]
        s_cols = [c for c, p in phase_dict.items() if p == "S"]
        self.picks = None
        if p_cols and s_cols:
            self.picks = sbg.ProbabilisticLabeller(
                label_columns=phase_dict, sigma=sigma, dim=0, noise_column=False, key=("X", "_picks")
            )
            self.detection = sbg.DetectionLabeller(p_cols, s_cols, factor=factor, key=("X", "_det"))
            self.p_index = self.picks.labels.index("P")
            self.s_index = self.picks.labels.index("S")

    def __call__(self, state_dict):
        x, metadata = state_dict["X"]
        width = x.shape[-1]
        if self.picks is None or not metadata.get("analyst_labels", True):
            state_dict["analyst"] = (np.full((3, width), np.nan, dtype=np.float32), None)
            return
        self.picks(state_dict)
        self.detection(state_dict)
        picks = state_dict.pop("_picks")[0]
        detection = state_dict.pop("_det")[0]
        target = np.stack([detection[0], picks[self.p_index], picks[self.s_index]]).astype(np.float32)
        state_dict["analyst"] = (target, None)

    def __str__(self):
        return f"AnalystTargets(sigma={self.sigma}, factor={self.factor})"


class CombineTargets:
    """Target ``y`` (3, W) = weighted mean of the analyst and teacher labels that are known.

    Where only one source is known it is used alone; where neither is, ``y`` is NaN (masked).
    """

    def __init__(self, analyst_weight: float = 0.5):
        self.analyst_weight = analyst_weight

    def __call__(self, state_dict):
        analyst = state_dict.pop("analyst")[0]
        teacher = state_dict.pop("teacher", (None, None))[0]
        if teacher is None:
            y = analyst
        else:
            teacher = np.asarray(teacher, dtype=np.float32)
            a_known, t_known = ~np.isnan(analyst), ~np.isnan(teacher)
            w = self.analyst_weight
            y = np.where(a_known & t_known, w * np.nan_to_num(analyst) + (1 - w) * np.nan_to_num(teacher), np.nan)
            y = np.where(a_known & ~t_known, analyst, y)
            y = np.where(~a_known & t_known, teacher, y)
        state_dict["y"] = (y.astype(np.float32), None)

    def __str__(self):
        return f"CombineTargets(analyst_weight={self.analyst_weight})"


class SecondEvent:
    """EqT's "add event": add a scaled, time-shifted copy of the window and of its labels.

    The copy is scaled by 1/U(1, 10) and circularly shifted by 10-90 % of the window, so a second,
    weaker arrival appears; its labels are merged with ``fmax`` (NaN = unknown stays unknown
    only where both are unknown).
    """

    def __init__(self, key: str = "X", label_key: str = "y"):
        self.key = key
        self.label_key = label_key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        y, y_meta = state_dict[self.label_key]
        width = x.shape[-1]
        shift = np.random.randint(width // 10, 9 * width // 10)
        scale = 1.0 / np.random.uniform(1, 10)
        state_dict[self.key] = (x + scale * np.roll(x, shift, axis=-1), metadata)
        state_dict[self.label_key] = (np.fmax(y, np.roll(y, shift, axis=-1)), y_meta)

    def __str__(self):
        return "SecondEvent(scale=1/U(1,10))"


def real_noise_pool(source, min_samples: int = 1000, guard: int = 100, quiet_below: float = 0.05) -> list:
    """Real noise of the training data, as ``(station, (3, n) array)`` pieces for :class:`RealNoise`.

    The pre-P part of the analyst-picked traces (up to ``guard`` samples before P) and, of the
    continuous data, the half-window stretches where the teacher's stacked rows (after
    the three components) stay below ``quiet_below``. Only rows of ``source`` (an
    ``ArrayWaveformSource`` of training items) are read, so validation and test data never enter.
    """
    pieces = []
    for item in source.metadata.to_dict("records"):
        array = source.arrays[int(item["array"])]
        p = item.get("trace_p_arrival_sample")
        if item.get("analyst_labels") and p is not None and np.isfinite(p):  # one training item per trace
            if int(p) - guard >= min_samples:
                pieces.append((item["station"], array[:3, : int(p) - guard]))
        elif item.get("kind") == "cx_random" and array.shape[0] > 3:
            start, stop = int(item["start"]), int(item["stop"])
            step = (stop - start) // 4  # 2-window items start every half window: each piece once
            teacher = array[3:, start : start + step]
            if step >= min_samples and np.nanmax(teacher) < quiet_below:
                pieces.append((item["station"], array[:3, start : start + step]))
    return pieces


class RealNoise:
    """Add a real noise recording of another station at a random level; the labels stay.

    ``pool`` holds ``(station, (3, n) array)`` pieces (:func:`real_noise_pool`). A piece is
    mirrored to the window's length when shorter, cut at a random start, demeaned and scaled so
    that its RMS is ``max|x| * 10**U(low, high)`` of the window (defaults: peak-to-noise ratios of
    10 to 300), so the events stay visible and their labels stay true. Unlike Gaussian noise it
    has a real spectrum: microseism, cultural noise, spikes.
    """

    def __init__(self, pool: list, low: float = -2.5, high: float = -1.0, key: str = "X"):
        if not pool:
            raise ValueError("RealNoise needs a non-empty noise pool")
        self.pool, self.low, self.high, self.key = pool, low, high, key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        station = metadata.get("station")
        for _ in range(10):  # prefer another station's noise
            other, noise = self.pool[np.random.randint(len(self.pool))]
            if other != station:
                break
        width = x.shape[-1]
        if noise.shape[-1] <= width:  # mirrored as often as needed
            noise = np.pad(noise, ((0, 0), (0, width + 1 - noise.shape[-1])), mode="symmetric")
        start = np.random.randint(noise.shape[-1] - width)
        noise = noise[: x.shape[0], start : start + width].astype(np.float64)
        noise = noise - noise.mean(axis=-1, keepdims=True)
        rms = np.sqrt(np.mean(noise**2))
        peak = np.max(np.abs(x))
        if rms > 0 and np.isfinite(peak) and peak > 0:
            level = peak * 10 ** np.random.uniform(self.low, self.high)
            x = (x + noise * (level / rms)).astype(x.dtype)
        state_dict[self.key] = (x, metadata)

    def __str__(self):
        return f"RealNoise({len(self.pool)} pieces, RMS max|x| x 10**U({self.low}, {self.high}))"


class TimeStretch:
    """Resample the waveform (and any stacked teacher rows) in time by a factor U(low, high).

    Apparent frequencies and S - P times change together, as for a nearer or farther event of
    another size; analyst pick samples in the metadata are scaled with it. Applied before the
    window is cut, so the stretch never pads. Linear interpolation: the factors stay close to 1,
    where its low-pass effect is small.
    """

    def __init__(self, low: float = 0.8, high: float = 1.25, key: str = "X"):
        self.low, self.high, self.key = low, high, key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        factor = np.exp(np.random.uniform(np.log(self.low), np.log(self.high)))
        n = x.shape[-1]
        m = max(int(round(n * factor)), 2)
        positions = np.arange(m) / factor
        stretched = np.stack([np.interp(positions, np.arange(n), row) for row in x]).astype(x.dtype)
        metadata = dict(metadata)
        for key, value in list(metadata.items()):
            if key.endswith("_arrival_sample") and value is not None and np.isfinite(value):
                metadata[key] = value * factor
        metadata["trace_npts"] = m
        state_dict[self.key] = (stretched, metadata)

    def __str__(self):
        return f"TimeStretch({self.low}, {self.high})"


class PolarityFlip:
    """Multiply all components by -1 (a valid wavefield: first motions flip, arrivals stay)."""

    def __call__(self, state_dict):
        x, metadata = state_dict["X"]
        state_dict["X"] = (-x, metadata)

    def __str__(self):
        return "PolarityFlip"


class RotateHorizontals:
    """Rotate the N and E rows of a Z, N, E window by a random angle (sensor orientation)."""

    def __call__(self, state_dict):
        x, metadata = state_dict["X"]
        angle = np.random.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rotated = x.copy()
        rotated[1] = c * x[1] - s * x[2]
        rotated[2] = s * x[1] + c * x[2]
        state_dict["X"] = (rotated, metadata)

    def __str__(self):
        return "RotateHorizontals"


def augmentation_pipeline(
    in_samples: int,
    phase_dict: dict[str, str],
    train: bool = True,
    teacher_rows: bool = False,
    window_around_picks: bool = True,
    analyst_weight: float = 0.5,
    physical_augmentations: bool = False,
    noise_rate: float = 0.3,
    pick_sigma: int = PICK_SIGMA,
    noise_pool: list | None = None,
    real_noise_rate: float = 0.0,
) -> list:
    """The EqT/LEQNet recipe as ``seisbench.generate`` steps; output keys ``X`` (3, W) and ``y`` (3, W).

    ``X`` stays in counts (demeaned): the model's ``annotate_batch_pre`` normalises in the training
    step. ``y`` rows are detection, P, S in [0, 1], NaN where unknown. ``noise_rate``: the share
    of training windows that get Gaussian noise (std up to 0.15 of the window's maximum): it can
    bury the small events of a window whose labels stay. ``pick_sigma``: width of the Gaussian
    analyst pick labels, in samples. ``real_noise_rate``: the share of training windows that get
    a real noise recording of another station from ``noise_pool`` (:class:`RealNoise`).
    """
    import seisbench.generate as sbg

    steps: list = []
    if train and physical_augmentations:
        steps.append(sbg.OneOf([TimeStretch(), sbg.NullAugmentation()], probabilities=[0.5, 0.5]))
    if train and window_around_picks and phase_dict:
        # EqT "shift event": two thirds of windows are placed around a random pick, then cropped.
        steps.append(
            sbg.OneOf(
                [
                    sbg.WindowAroundSample(
                        list(phase_dict),
                        samples_before=in_samples,
                        windowlen=2 * in_samples,
                        selection="random",
                        strategy="variable",
                    ),
                    sbg.NullAugmentation(),
                ],
                probabilities=[2, 1],
            )
        )
    steps.append(sbg.RandomWindow(windowlen=in_samples, strategy="pad"))
    if teacher_rows:
        steps.append(SplitTeacher())
    steps += [AnalystTargets(phase_dict, sigma=pick_sigma), CombineTargets(analyst_weight)]
    if train and physical_augmentations:
        steps += [
            sbg.OneOf([PolarityFlip(), sbg.NullAugmentation()], probabilities=[0.5, 0.5]),
            sbg.OneOf([RotateHorizontals(), sbg.NullAugmentation()], probabilities=[0.5, 0.5]),
        ]
    steps.append(sbg.Normalize(demean_axis=-1))
    if train and window_around_picks:
        # EqT's "shift event" (rate 0.99): a circular shift of waveform and labels together. It
        # moves picks even in traces exactly one window long (STEAD), where cropping cannot.
        steps.append(
            sbg.OneOf([sbg.RandomArrayRotation(keys=["X", "y"]), sbg.NullAugmentation()], probabilities=[0.99, 0.01])
        )
    if train:
        # Rates follow EqT's trainer (add_event 0.6 -> 0.3 here: continuous data already holds
        # many overlapping aftershocks; noise 0.3; drop_channel 0.5 -> 0.4; gap 0.2).
        steps += [
            sbg.OneOf([SecondEvent(), sbg.NullAugmentation()], probabilities=[0.3, 0.7]),
            sbg.OneOf([sbg.GaussianNoise(), sbg.NullAugmentation()], probabilities=[noise_rate, 1 - noise_rate]),
        ]
        if real_noise_rate > 0:
            steps.append(
                sbg.OneOf(
                    [RealNoise(noise_pool or []), sbg.NullAugmentation()],
                    probabilities=[real_noise_rate, 1 - real_noise_rate],
                )
            )
        steps += [
            sbg.OneOf([sbg.ChannelDropout(), sbg.NullAugmentation()], probabilities=[0.4, 0.6]),
            sbg.OneOf([sbg.AddGap(), sbg.NullAugmentation()], probabilities=[0.2, 0.8]),
        ]
    steps += [sbg.ChangeDtype(np.float32, "X"), sbg.ChangeDtype(np.float32, "y")]
    return steps
