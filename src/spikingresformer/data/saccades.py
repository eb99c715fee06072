"""Static image -> event stream: the image moves along three saccades in front of a simulated DVS.

As N-MNIST was recorded (Orchard et al., Front. Neurosci. 9:437, 2015), with the pixel model of the
v2e simulator's defaults (Hu, Liu, Delbruck, CVPRW 2021); ``docs/data.md`` gives the constants'
sources and the pixel model. A seed fixes the simulated camera's threshold mismatch, so the output
is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .aedat import Events

__all__ = ["SaccadeDVSConfig", "saccade_path", "images_to_events", "lin_log"]


@dataclass(frozen=True)
class SaccadeDVSConfig:
    """Constants of the simulated camera and motion (``docs/data.md`` gives their sources)."""

    pos_thres: float = 0.2
    neg_thres: float = 0.2
    sigma_thres: float = 0.03
    min_thres: float = 0.01
    lin_log_dn: float = 20.0
    saccade_us: int = 100_000
    steps_per_saccade: int = 20
    amplitude: float = 2.0  # triangle height/base in sensor pixels (N-MNIST: ~10 % of the image side)


def lin_log(dn: np.ndarray, threshold: float = 20.0) -> np.ndarray:
    """v2e's lin-log photoreceptor: ``x * ln(th)/th`` below ``th`` DN, ``ln(x)`` above (continuous)."""
    dn = np.asarray(dn, dtype=np.float64)
    return np.where(dn <= threshold, dn * (np.log(threshold) / threshold), np.log(np.maximum(dn, threshold)))


def saccade_path(cfg: SaccadeDVSConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Times (us) and (dx, dy) offsets (px) of every simulation step, the start included.

    The three saccades follow an isosceles triangle centred on the rest position: from the apex
    ``(0, -A/2)`` down-right to ``(A/2, A/2)``, left to ``(-A/2, A/2)``, and back up to the apex.
    """
    a = cfg.amplitude
    vertices = np.array([[0.0, -a / 2], [a / 2, a / 2], [-a / 2, a / 2], [0.0, -a / 2]])
    k = cfg.steps_per_saccade
    frac = np.arange(1, k + 1) / k
    offsets = [vertices[:1]]
    for s in range(3):
        offsets.append(vertices[s] + frac[:, None] * (vertices[s + 1] - vertices[s]))
    offs = np.concatenate(offsets)
    times = np.round(np.arange(3 * k + 1) * (cfg.saccade_us / k)).astype(np.int64)
    return times, offs


def _shift_matrix(size: int, d: float) -> np.ndarray:
    """``[size, size]`` matrix of a bilinear 1-D translation by ``d`` px: ``out[i] = in[i - d]``, zero outside."""
    a = np.zeros((size, size), dtype=np.float64)
    src = np.arange(size) - d
    i0 = np.floor(src).astype(np.int64)
    w = src - i0
    for lo, weight in ((i0, 1.0 - w), (i0 + 1, w)):
        ok = (lo >= 0) & (lo < size)
        np.add.at(a, (np.flatnonzero(ok), lo[ok]), weight[ok])
    return a


def _render(canvas: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Bilinear translation of ``canvas [N, S, S]`` by (dx, dy) pixels, zero outside (separable)."""
    ay = _shift_matrix(canvas.shape[1], dy)
    ax = _shift_matrix(canvas.shape[2], dx)
    return np.matmul(np.matmul(ay, canvas), ax.T)


def images_to_events(images: np.ndarray, sensor_size: int, cfg: SaccadeDVSConfig = SaccadeDVSConfig(),
                     seed: int = 0, thresholds: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> List[Events]:
    """Convert grey images ``[N, h, w]`` in ``[0, 1]`` (centred on an ``S x S`` sensor) to event streams.

    ``thresholds``: the sensor's per-pixel ON and OFF thresholds ``[S, S]`` (default: drawn from ``seed``).

    All images are simulated together (vectorised over images and pixels; one loop over the
    ``3 * steps_per_saccade`` time steps). Returns one :class:`Events` per image, sorted by time.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    n, h, w = images.shape
    S = sensor_size
    if h > S or w > S:
        raise ValueError(f"images of {h}x{w} do not fit a {S}x{S} sensor")
    canvas = np.zeros((n, S, S), dtype=np.float64)
    top, left = (S - h) // 2, (S - w) // 2
    canvas[:, top : top + h, left : left + w] = images

    if thresholds is None:  # the camera's per-pixel threshold mismatch
        rng = np.random.default_rng(seed)
        thresholds = tuple(np.maximum(rng.normal(mean, cfg.sigma_thres, (S, S)), cfg.min_thres)
                           for mean in (cfg.pos_thres, cfg.neg_thres))
    on, off = thresholds

    times, offs = saccade_path(cfg)

    def log_frame(k: int) -> np.ndarray:
        img = _render(canvas, float(offs[k, 0]), float(offs[k, 1]))
        return lin_log(255.0 * np.clip(img, 0.0, 1.0), cfg.lin_log_dn)

    memory = log_frame(0)
    rec_sample, rec_pix, rec_count, rec_pol, rec_step = [], [], [], [], []
    for k in range(1, len(times)):
        d = log_frame(k) - memory
        n_on = np.floor(np.maximum(d, 0.0) / on).astype(np.int64)
        n_off = np.floor(np.maximum(-d, 0.0) / off).astype(np.int64)
        memory = memory + n_on * on - n_off * off
        for counts, pol in ((n_on, 1), (n_off, 0)):
            idx = np.flatnonzero(counts)
            if idx.size:
                rec_sample.append(idx // (S * S))
                rec_pix.append(idx % (S * S))
                rec_count.append(counts.reshape(-1)[idx])
                rec_pol.append(np.full(idx.size, pol, dtype=np.uint8))
                rec_step.append(np.full(idx.size, k, dtype=np.int64))
    if not rec_sample:
        empty = np.zeros(0, dtype=np.int32)
        return [Events(np.zeros(0, np.int64), empty, empty.copy(), np.zeros(0, np.uint8)) for _ in range(n)]

    count, r_sample, r_pix, r_pol, r_step = map(np.concatenate, (rec_count, rec_sample, rec_pix, rec_pol, rec_step))
    ridx = np.repeat(np.arange(count.size, dtype=np.int64), count)  # record of every event
    first = np.cumsum(count) - count
    j = np.arange(ridx.size, dtype=np.int64) - first[ridx] + 1  # 1..count within its record
    step = r_step[ridx]
    t0 = times[step - 1]
    t = t0 + np.round((times[step] - t0) * j / count[ridx]).astype(np.int64)
    # sort by (sample, time, pixel) with one int64 key
    key = (r_sample[ridx] * (int(times[-1]) + 1) + t) * (S * S) + r_pix[ridx]
    order = np.argsort(key, kind="stable")
    t = t[order]
    ridx = ridx[order]
    sample, pix, pol = r_sample[ridx], r_pix[ridx], r_pol[ridx]
    bounds = np.searchsorted(sample, np.arange(n + 1))
    out = []
    for i in range(n):
        sl = slice(bounds[i], bounds[i + 1])
        p_i = pix[sl]
        out.append(Events(t[sl], (p_i % S).astype(np.int32), (p_i // S).astype(np.int32), pol[sl]))
    return out
