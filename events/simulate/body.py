"""A person making DVS Gesture's eleven arm gestures: body, user style, lighting and the hand paths of each
class.

A person stands facing the camera (their right side on the image's left). Head, torso and legs
are static and part of the background; each arm is two capsules (upper arm, forearm) and a disc
(hand), posed by two-link inverse kinematics from a hand trajectory. Body coordinates: x to the
image's right, y up, origin between the shoulders, 1 unit = 1 px at scale 1. Per class (1-based
as in the label files):

    1 hand_clapping                 both hands meet in front of the chest and part, ~2 Hz
    2 right_hand_wave               right forearm raised, swinging side to side, ~2.4 Hz
    3 left_hand_wave                the mirror image of 2
    4 right_arm_clockwise           right hand on a big circle around the shoulder, ~0.85 rev/s,
                                    clockwise as the camera sees it
    5 right_arm_counter_clockwise   4 turning the other way
    6 left_arm_clockwise            the mirror image of 5
    7 left_arm_counter_clockwise    the mirror image of 4
    8 arm_roll                      both hands circling each other in front of the chest
                                    (direction a per-user habit)
    9 air_drums                     both hands striking downwards in turn, drifting sideways
    10 air_guitar                   right hand strumming fast at the hip, left hand up the neck
    11 other_gestures               random smooth motion of one or both arms through random
                                    waypoints

So left/right variants differ only by side, clockwise/counter-clockwise only by the direction
of rotation. Users differ in position, size, speed, amplitude, clothing and skin contrast and
background; each repetition jitters speed, amplitude, phase and position, and hands tremble
slightly. Each gesture eases in from and out to the rest pose (arms hanging) over 0.25 s.
Lighting (see ``LIGHTINGS``) scales the light, adds veiling glare (less contrast) and sets the
sensor's noise rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from events.datasets import GESTURE_CLASSES as _DATASET_CLASSES
from events.errors import InputError

from .render import render_capsules

#: Class names, index + 1 = the class number in label files (the data-set reader's list).
GESTURE_CLASSES = tuple(_DATASET_CLASSES)

#: Lighting conditions of the original recordings: illumination factor, veiling glare (share of
#: uniform light, lowers contrast) and the sensor's noise rates under that light.
LIGHTINGS = {
    "fluorescent": {"illumination": 0.8, "glare": 0.10, "background_rate_hz": 0.15, "shot_noise_rate_hz": 0.3},
    "fluorescent_led": {"illumination": 0.9, "glare": 0.06, "background_rate_hz": 0.12, "shot_noise_rate_hz": 0.2},
    "lab": {"illumination": 1.0, "glare": 0.03, "background_rate_hz": 0.1, "shot_noise_rate_hz": 0.1},
    "led": {"illumination": 0.7, "glare": 0.08, "background_rate_hz": 0.15, "shot_noise_rate_hz": 0.4},
    "natural": {"illumination": 0.45, "glare": 0.18, "background_rate_hz": 0.2, "shot_noise_rate_hz": 0.8},
}


GESTURE_SIZE = 128
SHOULDER = 13.0  # half the shoulder width
UPPER, FORE = 19.0, 17.0
REACH = UPPER + FORE
UPPER_R, FORE_R, HAND_R = 3.4, 2.8, 4.0
RAMP_S = 0.25  # ease from / to the rest pose
BODY_SCALE = 1.45  # pixels per body unit for an average user
LIMB_SHADING = 0.4  # limbs are darker at their edges than along their axis
_REST_ANGLE = -math.pi / 2 - 0.12
REST_R = np.array([-SHOULDER + REACH * math.cos(_REST_ANGLE), REACH * math.sin(_REST_ANGLE)])
REST_L = REST_R * [-1.0, 1.0]
SHOULDER_R = np.array([-SHOULDER, 0.0])
SHOULDER_L = np.array([SHOULDER, 0.0])


@dataclass(frozen=True)
class UserStyle:
    """How one user looks and moves (drawn by :func:`user_style`)."""

    cx: float  # image column of the body's midline
    sy: float  # image row of the shoulders
    scale: float  # pixels per body unit
    speed: float  # tempo factor of every gesture
    amplitude: float  # size factor of every gesture
    roll_dir: float  # +1 or -1: the way this user rolls the arms
    background: float  # mean wall intensity
    shirt: float
    sleeve: float
    skin: float
    trousers: float
    texture_seed: int


def user_style(rng: np.random.Generator) -> UserStyle:
    """A random user."""
    background = rng.uniform(0.35, 0.65)
    # clothes contrast with the wall, darker or lighter
    shirt = float(np.clip(background + rng.choice([-1, 1]) * rng.uniform(0.18, 0.35), 0.05, 0.95))
    skin = rng.uniform(0.55, 0.9)
    return UserStyle(
        cx=64 + rng.uniform(-9, 9),
        sy=48 + rng.uniform(-5, 5),
        scale=BODY_SCALE * rng.uniform(0.88, 1.12),
        speed=rng.uniform(0.8, 1.25),
        amplitude=rng.uniform(0.85, 1.15),
        roll_dir=float(rng.choice([-1.0, 1.0])),
        background=background,
        shirt=shirt,
        sleeve=shirt if rng.random() < 0.5 else skin,
        skin=skin,
        trousers=rng.uniform(0.08, 0.4),
        texture_seed=int(rng.integers(2**31)),
    )


def to_image(style: UserStyle, pts: np.ndarray) -> np.ndarray:
    """Body coordinates (..., 2) to image coordinates (column, row)."""
    out = np.empty_like(pts)
    out[..., 0] = style.cx + style.scale * pts[..., 0]
    out[..., 1] = style.sy - style.scale * pts[..., 1]
    return out


def body_background(style: UserStyle, illumination: float, glare: float) -> np.ndarray:
    """The static part of the view (wall texture, legs, torso, neck, head) under a lighting."""
    rng = np.random.default_rng(style.texture_seed)
    n = GESTURE_SIZE
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    spectrum = np.fft.fft2(rng.normal(size=(n, n))) * np.exp(-(fx**2 + fy**2) / (2 * 0.03**2))
    tex = np.fft.ifft2(spectrum).real
    wall = style.background + 0.1 * tex / tex.std()
    for _ in range(3):  # a few flat objects (doors, shelves)
        x0, y0 = rng.integers(0, n - 20, 2)
        w, h = rng.integers(8, 40, 2)
        wall[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.15, 0.85)
    body = [
        ((-6, -44), (-8, -100), 6.5, style.trousers),
        ((6, -44), (8, -100), 6.5, style.trousers),
        ((0, -8), (0, -42), 12.5, style.shirt),
        ((-11, -3), (11, -3), 5.0, style.shirt),
        ((0, 3), (0, 9), 3.5, style.skin),
        ((0, 15), (0, 15), 8.5, style.skin),
    ]
    caps = np.zeros((1, len(body), 7))
    for m, (a, b, r, val) in enumerate(body):
        caps[0, m, 0:2] = to_image(style, np.array(a, float))
        caps[0, m, 2:4] = to_image(style, np.array(b, float))
        caps[0, m, 4] = r * style.scale
        caps[0, m, 5] = val
        caps[0, m, 6] = LIMB_SHADING
    out = np.empty((1, n, n), np.float32)
    render_capsules(np.clip(wall, 0.02, 1.0).astype(np.float32), caps, out)
    return lit(out[0], illumination, glare)


def lit(intensity, illumination: float, glare: float):
    """Linear intensity under a lighting: scaled light plus uniform veiling glare."""
    return illumination * ((1.0 - glare) * intensity + glare * 0.5)


def _smoothstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, 1.0])


def _circle(centre, radius, angle):
    return np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)], -1)


def rest_hands(n: int, side: str) -> np.ndarray:
    return np.repeat((REST_R if side == "R" else REST_L)[None], n, axis=0)


def gesture_params(cls: int, rng: np.random.Generator, style: UserStyle, duration_s: float) -> dict:
    """Per-repetition parameters of class ``cls`` (1..11): tempo, size, phases, positions."""
    p = {
        "speed": style.speed * rng.uniform(0.88, 1.12),
        "amp": style.amplitude * rng.uniform(0.88, 1.12),
        "phase": rng.uniform(0, 2 * np.pi),
        "phase2": rng.uniform(0, 2 * np.pi),
        "shift": rng.uniform(-1.5, 1.5, 2),
        "roll_dir": style.roll_dir,
        "tremor": [(rng.uniform(4, 8), rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5)) for _ in range(4)],
    }
    if cls == 11:
        arms = [("R", "L"), ("R",), ("L",)][int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
        paths = {}
        for side in ("R", "L"):
            if side not in arms:
                continue
            k = int(duration_s * 1.5) + 2
            pts = []
            while len(pts) < k:  # reachable points, not too close to the shoulder
                q = np.array([rng.uniform(-42, 4), rng.uniform(-38, 24)])
                if 9 < np.hypot(*(q - SHOULDER_R)) < 0.92 * REACH:
                    pts.append(q)
            pts = np.array(pts)
            knots = np.sort(rng.uniform(0.15, 0.85, k - 2))
            paths[side] = {
                "points": pts if side == "R" else _mirror(pts),
                "knots": np.concatenate([[0.0], knots, [1.0]]),
                "wiggle": (rng.uniform(1, 3), rng.uniform(0, 2.5)),
                "bend": float(rng.choice([-1.0, 1.0])),
            }
        p["paths"] = paths
    return p


def _waypoint_path(tau, duration, path):
    """Smooth passage through random waypoints (cosine easing between consecutive points)."""
    u = np.clip(tau / duration, 0.0, 1.0)
    knots, pts = path["knots"], path["points"]
    j = np.clip(np.searchsorted(knots, u, side="right") - 1, 0, len(knots) - 2)
    frac = (u - knots[j]) / (knots[j + 1] - knots[j])
    ease = 0.5 - 0.5 * np.cos(np.pi * frac)
    pos = pts[j] + ease[:, None] * (pts[j + 1] - pts[j])
    f, a = path["wiggle"]
    pos[:, 0] += a * np.sin(2 * np.pi * f * tau)
    return pos


def hand_paths(cls: int, tau: np.ndarray, duration: float, p: dict):
    """Hand positions (N, 2) in body coordinates of the right and left hands at ``tau`` seconds
    into a gesture of class ``cls`` lasting ``duration`` s, and the elbow bend of each arm
    (+1: elbow on the counter-clockwise side of the shoulder-hand line, -1: clockwise)."""
    f, a, ph, ph2 = p["speed"], p["amp"], p["phase"], p["phase2"]
    n = len(tau)
    sh = p["shift"]
    if cls == 1:  # hand clapping
        x = 4.2 + 9.0 * a * (1 - np.cos(2 * np.pi * 2.0 * f * tau + ph)) / 2
        y = -20.0 + sh[1] + 1.5 * np.sin(2 * np.pi * 2.0 * f * tau + ph)
        right = np.stack([-x + sh[0] * 0.3, y], -1)
        left = np.stack([x + sh[0] * 0.3, y], -1)
        hands, bends = (right, left), (-1.0, 1.0)
    elif cls in (2, 3):  # hand wave (class 3 is the mirror image)
        phi = -0.15 + 0.5 * a * np.sin(2 * np.pi * 2.4 * f * tau + ph)
        pivot = SHOULDER_R + np.array([-8.0, -1.0]) + sh
        wave = np.stack([pivot[0] + 17.0 * np.sin(phi), pivot[1] + 17.0 * np.cos(phi)], -1)
        hands, bends = (wave, rest_hands(n, "L")), (1.0, 1.0)
        if cls == 3:
            hands, bends = (_mirror(hands[1]), _mirror(hands[0])), (-bends[1], -bends[0])
    elif cls in (4, 5, 6, 7):  # arm circles: 4 right cw, 5 right ccw, 6 = mirror of 5, 7 = mirror of 4
        clockwise_right = cls in (4, 7)
        turn = -1.0 if clockwise_right else 1.0
        angle = ph + turn * 2 * np.pi * 0.85 * f * tau
        circle = _circle(SHOULDER_R + np.array([-2.0, -2.0]) + sh, min(29.0 * a, 31.0), angle)
        hands, bends = (circle, rest_hands(n, "L")), (-turn, 1.0)
        if cls in (6, 7):
            hands, bends = (_mirror(hands[1]), _mirror(hands[0])), (-bends[1], -bends[0])
    elif cls == 8:  # arm roll
        centre = np.array([0.0, -17.0]) + sh
        angle = ph + p["roll_dir"] * 2 * np.pi * 1.7 * f * tau
        r = 5.5 * a
        hands = (_circle(centre + [-3.5, 0.0], r, angle), _circle(centre + [3.5, 0.0], r, angle + np.pi))
        bends = (-1.0, 1.0)
    elif cls == 9:  # air drums: strikes in turn, drifting sideways
        hit = np.abs(np.sin(np.pi * 2.2 * f * tau + ph))
        hit2 = np.abs(np.sin(np.pi * 2.2 * f * tau + ph + np.pi / 2))
        drift = 4.0 * np.sin(2 * np.pi * 0.4 * tau + ph2)
        right = np.stack([-9.0 + sh[0] + drift, -24.0 + sh[1] + 8.0 * a * hit], -1)
        left = np.stack([9.0 + sh[0] + drift, -24.0 + sh[1] + 8.0 * a * hit2], -1)
        hands, bends = (right, left), (-1.0, 1.0)
    elif cls == 10:  # air guitar
        strum = np.stack(
            [
                -3.0 + sh[0] + 1.5 * np.sin(2 * np.pi * 0.5 * tau + ph2),
                -27.0 + sh[1] + 5.5 * a * np.sin(2 * np.pi * 3.6 * f * tau + ph),
            ],
            -1,
        )
        beta = 0.3 + 0.08 * np.sin(2 * np.pi * 0.5 * f * tau + ph2)
        reach = 27.0 + 0.8 * np.sin(2 * np.pi * 6.0 * tau)
        neck = np.stack([SHOULDER_L[0] + reach * np.cos(beta), reach * np.sin(beta)], -1)
        hands, bends = (strum, neck), (-1.0, -1.0)
    elif cls == 11:  # other: random smooth motion
        hands, bends = [rest_hands(n, "R"), rest_hands(n, "L")], [1.0, 1.0]
        for j, side in enumerate(("R", "L")):
            path = p["paths"].get(side)
            if path is not None:
                hands[j] = _waypoint_path(tau, duration, path)
                bends[j] = path["bend"]
        hands, bends = tuple(hands), tuple(bends)
    else:
        raise InputError(f"gesture class must be 1..11, got {cls}")
    # tremor, and easing from / to the rest pose
    out = []
    w = _smoothstep(np.minimum(tau, duration - tau) / RAMP_S)[:, None]
    for j, (hand, rest) in enumerate(zip(hands, (REST_R, REST_L))):
        hand = hand.copy()
        for axis in (0, 1):
            fq, phs, amp = p["tremor"][2 * j + axis]
            hand[:, axis] += amp * np.sin(2 * np.pi * fq * tau + phs)
        out.append(rest + w * (hand - rest))
    return out[0], out[1], bends[0], bends[1]


def arm_joints(shoulder: np.ndarray, hand: np.ndarray, bend) -> tuple[np.ndarray, np.ndarray]:
    """Two-link inverse kinematics: elbow and wrist (N, 2) for hand targets (N, 2); targets out
    of reach are pulled onto the reachable ring. ``bend`` (scalar or (N,)) picks the elbow side."""
    d = hand - shoulder
    dist = np.hypot(d[:, 0], d[:, 1])
    dist_c = np.clip(dist, abs(UPPER - FORE) + 1e-6, REACH)
    base = np.arctan2(d[:, 1], d[:, 0])
    cos_a = np.clip((UPPER**2 + dist_c**2 - FORE**2) / (2 * UPPER * dist_c), -1.0, 1.0)
    theta = base + np.asarray(bend) * np.arccos(cos_a)
    elbow = shoulder + UPPER * np.stack([np.cos(theta), np.sin(theta)], -1)
    wrist = shoulder + dist_c[:, None] * np.stack([np.cos(base), np.sin(base)], -1)
    return elbow, wrist
