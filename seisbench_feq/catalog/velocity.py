"""Velocity models for association: the Southern California 1-D model, user layers, and the
binary travel-time table that ``pyocto.VelocityModel1D`` reads.

The table is computed here from the exact first arrivals of flat layers and written in PyOcto's
layout. PyOcto's own ``VelocityModel1D.create_model`` is not used: it needs pyrocko's eikonal
solver, and the current pyrocko wheel (2026.6.2) does not import beside numpy 2 ("numpy.core.
multiarray failed to import", measured); it also interpolates velocities linearly between the
rows, so a table of layer tops would become a gradient model.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .readers import read_table

# Hadley & Kanamori (1977) 1-D P model of Southern California, the SCSN's routine layered model.
# Depth of each layer top (km) and P velocity (km/s); S follows from Vp/Vs.
SOCAL_MODEL = pd.DataFrame({"depth": [0.0, 5.5, 16.0, 32.0], "vp": [5.5, 6.3, 6.7, 7.8]})


def layered_travel_times(
    layers: pd.DataFrame, distances_km, depths_km, phase: str = "P", vp_vs_ratio: float = 1.73
) -> np.ndarray:
    """First-arrival times (s) in a flat layered model, source at depth, receiver at the surface.

    ``layers`` has ``depth`` (top of each layer, km, first 0) and ``vp`` (km/s), optionally ``vs``.
    Velocities are constant inside a layer. The first arrival is the earliest of the direct wave
    (ray parameter found by bisection) and the head waves along the top of each faster layer below
    the source. Returns an array of shape ``(len(distances_km), len(depths_km))``.
    """
    tops = layers["depth"].to_numpy(float)
    v = layers["vs"].to_numpy(float) if phase == "S" and "vs" in layers else layers["vp"].to_numpy(float)
    if phase == "S" and "vs" not in layers:
        v = v / vp_vs_ratio
    if tops[0] != 0 or np.any(np.diff(tops) <= 0) or np.any(v <= 0):
        raise ValueError("velocity model: layer tops must start at 0 and increase; velocities must be positive")
    x = np.asarray(distances_km, dtype=float)
    bottoms = np.append(tops[1:], np.inf)
    out = np.empty((len(x), len(np.atleast_1d(depths_km))))
    for iz, zs in enumerate(np.atleast_1d(depths_km)):
        h = np.clip(np.minimum(bottoms, zs) - tops, 0, None)  # path length per layer, surface to source
        used = h > 0
        if not used.any():
            best = x / v[0]
        else:
            hv, vv = h[used], v[used]
            vmax = vv.max()
            lo, hi = np.zeros_like(x), np.full_like(x, 1.0 - 1e-12)  # u = p * vmax in [0, 1)
            for _ in range(60):
                u = 0.5 * (lo + hi)
                pv = (u[:, None] / vmax) * vv[None, :]
                xu = np.sum(hv * pv / np.sqrt(1 - pv**2), axis=1)
                lo, hi = np.where(xu < x, u, lo), np.where(xu < x, hi, u)
            pv = (0.5 * (lo + hi))[:, None] / vmax * vv[None, :]
            best = np.sum(hv / (vv * np.sqrt(1 - pv**2)), axis=1)
        for k in range(1, len(tops)):
            if tops[k] < zs or v[k] <= v[:k].max():
                continue
            up = np.clip(np.minimum(bottoms[:k], tops[k]) - tops[:k], 0, None)  # surface to interface
            down = np.clip(np.minimum(bottoms[:k], tops[k]) - np.maximum(tops[:k], zs), 0, None)  # source down
            q = v[:k] / v[k]
            t_head = x / v[k] + np.sum((up + down) * np.sqrt(1 / v[:k] ** 2 - 1 / v[k] ** 2))
            x_crit = np.sum((up + down) * q / np.sqrt(1 - q**2))
            best = np.where(x >= x_crit, np.minimum(best, t_head), best)
        out[:, iz] = best
    return out


def write_pyocto_table(
    layers: pd.DataFrame, path, *, max_distance_km: float, max_depth_km: float, delta_km: float = 0.25,
    vp_vs_ratio: float = 1.73,
) -> Path:
    """Write the binary travel-time table of ``pyocto.VelocityModel1D`` for a layered model.

    The layout is PyOcto's (as its ``create_model`` writes it): header ``(nx, nz, delta)``, then
    P and S times as (nx, nz) float64.
    """
    from ..io.files import atomic_write_bytes

    nx, nz = int(np.ceil(max_distance_km / delta_km)) + 1, int(np.ceil(max_depth_km / delta_km)) + 1
    x, z = np.arange(nx) * delta_km, np.arange(nz) * delta_km
    tp = layered_travel_times(layers, x, z, "P", vp_vs_ratio)
    ts = layered_travel_times(layers, x, z, "S", vp_vs_ratio)
    data = (struct.pack("iid", nx, nz, delta_km) + np.ascontiguousarray(tp, dtype=np.float64).tobytes()
            + np.ascontiguousarray(ts, dtype=np.float64).tobytes())
    return atomic_write_bytes(Path(path), data)


_SOCAL_NAMES = ("socal", "hadley-kanamori", "hk")


def layers_frame(model) -> pd.DataFrame:
    """The layers of ``"socal"``, a CSV path or a DataFrame (``depth``, ``vp``, optional ``vs``)."""
    if isinstance(model, (str, Path)) and str(model).lower() in _SOCAL_NAMES:
        return SOCAL_MODEL.copy()
    df = read_table(Path(model)) if isinstance(model, (str, Path)) else pd.DataFrame(model).copy()
    df.columns = [str(c).lower() for c in df.columns]
    if not {"depth", "vp"} <= set(df.columns):
        raise ValueError(f"velocity model needs columns depth (km) and vp (km/s), optionally vs; got {list(df.columns)}")
    return df.sort_values("depth").reset_index(drop=True)


def pyocto_velocity_model(velocity_model, *, vp: float, vp_vs_ratio: float, tolerance: float,
                          max_distance_km: float, max_depth_km: float, table_dir=None):
    """``(pyocto model, name, slowest S velocity)`` for ``"homogeneous"``, ``"socal"``, layers
    (DataFrame or CSV) or a ready PyOcto model object. Layered tables are cached in ``table_dir``
    (default: the temp dir) under a hash of the layers and the grid extent."""
    import pyocto

    if isinstance(velocity_model, str) and velocity_model.lower() == "homogeneous":
        model = pyocto.VelocityModel0D(p_velocity=vp, s_velocity=vp / vp_vs_ratio, tolerance=tolerance)
        return model, f"homogeneous Vp={vp:g} km/s Vp/Vs={vp_vs_ratio:g}", vp / vp_vs_ratio
    if not isinstance(velocity_model, (str, Path, pd.DataFrame)):
        return velocity_model, type(velocity_model).__name__, vp / vp_vs_ratio
    layers = layers_frame(velocity_model)
    if "vs" not in layers:
        layers["vs"] = layers["vp"] / vp_vs_ratio
    key = hashlib.sha1((layers.to_csv(index=False) + f"{max_distance_km:.0f}/{max_depth_km:.1f}").encode()).hexdigest()[:16]
    table = Path(table_dir or Path(tempfile.gettempdir()) / "seisbench_feq_pyocto") / f"{key}.bin"
    if not table.exists():
        write_pyocto_table(layers, table, max_distance_km=max_distance_km, max_depth_km=max_depth_km + 1.0)
    model = pyocto.VelocityModel1D(
        str(table), tolerance=tolerance,
        surface_p_velocity=float(layers["vp"].iloc[0]), surface_s_velocity=float(layers["vs"].iloc[0]),
    )
    name = "socal (Hadley-Kanamori 1977)" if str(velocity_model).lower() in _SOCAL_NAMES else "layered (user)"
    return model, name, float(layers["vs"].min())
