"""Numba rendering kernels of the simulator's scenes: capsules (limbs) and B-spline digits."""

from __future__ import annotations

import math

from numba import njit

import events.jit  # noqa: F401  (numba's target set before any kernel compiles)

STROKE_LOW, STROKE_HIGH = 0.3, 0.6  # B-spline level where a stroke starts / is fully bright


@njit(cache=True, nogil=True)
def render_capsules(background, caps, out):
    """Paint capsules over ``background`` (H, W) into ``out`` (N, H, W), one frame per row of
    ``caps`` (N, M, 7): x0, y0, x1, y1, radius, intensity, shading, in pixel coordinates (pixel
    centres at integers), painted in order. A limb is lit like a cylinder: at distance d from its
    axis the intensity is ``intensity * (1 - shading * (d / radius)**2)``. Edges are anti-aliased
    over one pixel: coverage ``clip(radius - d + 0.5, 0, 1)`` blends the intensity in."""
    height, width = background.shape
    for k in range(caps.shape[0]):
        out[k] = background
        for m in range(caps.shape[1]):
            x0 = caps[k, m, 0]
            y0 = caps[k, m, 1]
            x1 = caps[k, m, 2]
            y1 = caps[k, m, 3]
            r = caps[k, m, 4]
            val = caps[k, m, 5]
            shade = caps[k, m, 6]
            if r <= 0.0:
                continue
            dx = x1 - x0
            dy = y1 - y0
            ll = dx * dx + dy * dy
            reach2 = (r + 0.5) * (r + 0.5)
            xa = max(0, int(math.floor(min(x0, x1) - r - 1.0)))
            xb = min(width - 1, int(math.ceil(max(x0, x1) + r + 1.0)))
            ya = max(0, int(math.floor(min(y0, y1) - r - 1.0)))
            yb = min(height - 1, int(math.ceil(max(y0, y1) + r + 1.0)))
            for yy in range(ya, yb + 1):
                for xx in range(xa, xb + 1):
                    s = 0.0
                    if ll > 0.0:
                        s = min(1.0, max(0.0, ((xx - x0) * dx + (yy - y0) * dy) / ll))
                    px = x0 + s * dx - xx
                    py = y0 + s * dy - yy
                    d2 = px * px + py * py
                    if d2 < reach2:
                        d = math.sqrt(d2)
                        a = min(r + 0.5 - d, 1.0)
                        q = min(d / r, 1.0)
                        out[k, yy, xx] += a * (val * (1.0 - shade * q * q) - out[k, yy, xx])


@njit(cache=True, nogil=True)
def _bspline(t):
    t = abs(t)
    if t < 1.0:
        return (4.0 - 6.0 * t * t + 3.0 * t * t * t) / 6.0
    if t < 2.0:
        return (2.0 - t) ** 3 / 6.0
    return 0.0


@njit(cache=True, nogil=True)
def render_digit(img, centres, inv, cell, background, gain, out):
    """Frames (N, H, W) of ``img`` (h, w, 0..1) reconstructed with a cubic B-spline, then
    a smooth step from ``STROKE_LOW`` to ``STROKE_HIGH``: canvas pixel p maps to image
    coordinates ``inv @ (p - centres[k]) / cell + ((w-1)/2, (h-1)/2)``."""
    ih, iw = img.shape
    cu = (iw - 1) / 2.0
    cv = (ih - 1) / 2.0
    for k in range(out.shape[0]):
        for yy in range(out.shape[1]):
            for xx in range(out.shape[2]):
                px = xx - centres[k, 0]
                py = yy - centres[k, 1]
                u = (inv[0, 0] * px + inv[0, 1] * py) / cell + cu
                v = (inv[1, 0] * px + inv[1, 1] * py) / cell + cv
                acc = 0.0
                u0 = int(math.floor(u))
                v0 = int(math.floor(v))
                for j in range(v0 - 1, v0 + 3):
                    if j < 0 or j >= ih:
                        continue
                    bv = _bspline(v - j)
                    for i in range(u0 - 1, u0 + 3):
                        if 0 <= i < iw:
                            acc += img[j, i] * bv * _bspline(u - i)
                # soft threshold: strokes with ~2 px edges, as a digit drawn on a screen
                u = min(1.0, max(0.0, (acc - STROKE_LOW) / (STROKE_HIGH - STROKE_LOW)))
                out[k, yy, xx] = background + gain * u * u * (3.0 - 2.0 * u)
