"""Recordings of simulated users making the gestures (:class:`GestureRecordingScene`) and the synthetic DVS
Gesture data set in the IBM layout (:func:`simulate_gestures`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from events.errors import InputError
from events.types import SensorSize, check_int

from .body import (
    FORE_R,
    GESTURE_CLASSES,
    GESTURE_SIZE,
    HAND_R,
    LIGHTINGS,
    LIMB_SHADING,
    RAMP_S,
    SHOULDER_L,
    SHOULDER_R,
    UPPER_R,
    UserStyle,
    arm_joints,
    body_background,
    gesture_params,
    hand_paths,
    lit,
    rest_hands,
    to_image,
    user_style,
)
from .camera import EventCameraModel
from .output import FORMAT_VERSION, claim_output, remove_stale, write_meta, write_text
from .render import render_capsules


@dataclass(frozen=True)
class GestureSegment:
    """One labelled gesture of a recording: class 1..11 and its interval in µs."""

    cls: int
    start_us: int
    end_us: int
    params: dict


class GestureRecordingScene:
    """A user performing ``segments`` under a lighting; arms at rest between them."""

    def __init__(self, style: UserStyle, segments: list[GestureSegment], lighting: dict):
        self.style = style
        self.segments = segments
        self.illumination = lighting["illumination"]
        self.glare = lighting["glare"]
        self.background = body_background(style, self.illumination, self.glare).astype(np.float32)

    def poses(self, t_us: np.ndarray):
        """Hand targets and elbow bends of both arms at ``t_us`` (body coordinates)."""
        t = np.asarray(t_us, dtype=np.int64)
        n = len(t)
        right, left = rest_hands(n, "R"), rest_hands(n, "L")
        bend_r, bend_l = np.ones(n), np.ones(n)
        for seg in self.segments:
            sel = (t >= seg.start_us) & (t < seg.end_us)
            if not sel.any():
                continue
            duration = (seg.end_us - seg.start_us) * 1e-6
            tau = (t[sel] - seg.start_us) * 1e-6
            r_path, l_path, r_bend, l_bend = hand_paths(seg.cls, tau, duration, seg.params)
            right[sel], left[sel], bend_r[sel], bend_l[sel] = r_path, l_path, r_bend, l_bend
        return right, left, bend_r, bend_l

    def capsules(self, t_us: np.ndarray) -> np.ndarray:
        """Arm capsules (N, 6, 7) in image coordinates, lit: left arm first, then right."""
        right, left, bend_r, bend_l = self.poses(t_us)
        s = self.style
        caps = np.zeros((len(right), 6, 7))
        sleeve = lit(s.sleeve, self.illumination, self.glare)
        skin = lit(s.skin, self.illumination, self.glare)
        for j, (shoulder, hand, bend) in enumerate(((SHOULDER_L, left, bend_l), (SHOULDER_R, right, bend_r))):
            elbow, wrist = arm_joints(shoulder, hand, bend)
            sh_img = to_image(s, np.broadcast_to(shoulder, elbow.shape))
            el_img, wr_img = to_image(s, elbow), to_image(s, wrist)
            for m, (a, b, r, val) in enumerate(
                ((sh_img, el_img, UPPER_R, sleeve), (el_img, wr_img, FORE_R, sleeve), (wr_img, wr_img, HAND_R, skin))
            ):
                c = caps[:, 3 * j + m]
                c[:, 0:2], c[:, 2:4], c[:, 4], c[:, 5], c[:, 6] = a, b, r * s.scale, val, LIMB_SHADING
        return caps

    def __call__(self, t_us: np.ndarray) -> np.ndarray:
        caps = self.capsules(t_us)
        frames = np.empty((len(caps), GESTURE_SIZE, GESTURE_SIZE), np.float32)
        render_capsules(self.background, caps, frames)
        return frames


#: The simulated DVS128 behind the synthetic DVS Gesture (noise rates come with the lighting).
GESTURE_CAMERA = {"contrast_threshold": 0.14, "threshold_mismatch": 0.03, "refractory_us": 200}
#: Render step of the gesture scenes: hands move at most ~0.8 px a step.
GESTURE_STEP_US = 2000
GESTURE_REST_S = (0.3, 0.8)


def _split_users(users: int) -> int:
    """Test users: roughly the last fifth (DVS Gesture: users 24-29 of 29), none for one user."""
    return 0 if users < 2 else max(1, round(users / 5))


def simulate_gestures(
    out_dir,
    *,
    seed: int = 0,
    users: int = 6,
    per_class: int = 2,
    lightings: Sequence[str] | None = None,
    gesture_s: tuple[float, float] = (1.5, 2.5),
    progress: bool = True,
) -> Path:
    """Write a synthetic DVS Gesture in IBM's original layout to ``out_dir`` and return its path.

    Users ``user01 .. userNN`` each perform every one of the 11 classes ``per_class`` times.
    ``lightings`` (default: all five of the original, ``LIGHTINGS`` in :mod:`events.simulate.body`)
    are the conditions to record under: a user makes ``min(per_class, len(lightings))``
    recordings, each under a different lighting (rotating over the list from user to user), and
    repetition r of every class goes to the user's recording ``r % that number``; the gestures
    of a recording come in a shuffled order, ``gesture_s`` (min, max) seconds each, with rest
    periods of 0.3-0.8 s (arms hanging) before, between and after them. Files:

    - ``userNN_<lighting>.aedat``: AEDAT 3.1, 128 x 128, timestamps in µs from an arbitrary
      camera-clock origin (0.5-3 s), as the original recordings;
    - ``userNN_<lighting>_labels.csv``: ``class,startTime_usec,endTime_usec``, class 1..11;
    - ``trials_to_train.txt`` / ``trials_to_test.txt``: the ``.aedat`` names of each split, the
      last ``round(users / 5)`` users (at least one when ``users >= 2``) being the test users;
    - ``README.txt`` and ``simulation.json`` (parameters, per-recording summary).

    One simulated sensor (``GESTURE_CAMERA``, fixed threshold mismatch) records everything, with
    the noise rates of each lighting and fresh noise per recording. Deterministic given ``seed``
    (identical bytes); every file is written atomically. ``out_dir`` must be empty or hold an
    earlier simulated DVS Gesture (its recordings, labels and trial lists are replaced, left-over
    ones removed), else ``FileExistsError``: real recordings are never overwritten.
    """
    from events.formats.aedat3 import write_aedat3

    seed = check_int("seed", seed, 0)
    users = check_int("users", users, 1)
    per_class = check_int("per_class", per_class, 1)
    lightings = list(LIGHTINGS) if lightings is None else [str(name) for name in lightings]
    unknown = [name for name in lightings if name not in LIGHTINGS]
    if not lightings or unknown or len(set(lightings)) != len(lightings):
        raise InputError(f"lightings must be distinct names out of {sorted(LIGHTINGS)}, got {lightings!r}")
    g_min, g_max = (float(v) for v in gesture_s)
    if not (2 * RAMP_S < g_min <= g_max < 600):  # room to ease in and out; a sanity bound
        raise InputError(
            f"gesture_s must be (min, max) seconds with {2 * RAMP_S} < min <= max < 600, got {gesture_s!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = claim_output(out, "events.simulate.simulate_gestures", ("user*.aedat", "user*_labels.csv", "trials_to_*.txt"))
    written = set()
    n_classes = len(GESTURE_CLASSES)
    n_rec = min(per_class, len(lightings))
    n_test_users = _split_users(users)
    trials = {"train": [], "test": []}
    summary = []
    cameras = {}
    with tqdm(
        total=users * per_class * n_classes, desc="simulating gestures", unit="gesture", disable=not progress
    ) as bar:
        for user in range(1, users + 1):
            style = user_style(np.random.default_rng([seed, 10, user]))
            plan = [[] for _ in range(n_rec)]
            for r in range(per_class):
                plan[r % n_rec].extend(range(1, n_classes + 1))
            for j, classes in enumerate(plan):
                lighting = lightings[(user - 1 + j) % len(lightings)]
                rng = np.random.default_rng([seed, 11, user, j])
                rng.shuffle(classes)
                origin = int(rng.integers(500_000, 3_000_000))
                t = origin + int(rng.uniform(*GESTURE_REST_S) * 1e6)
                segments = []
                for cls in classes:
                    duration = rng.uniform(g_min, g_max)
                    end = t + int(duration * 1e6)
                    segments.append(GestureSegment(int(cls), t, end, gesture_params(int(cls), rng, style, duration)))
                    t = end + int(rng.uniform(*GESTURE_REST_S) * 1e6)
                scene = GestureRecordingScene(style, segments, LIGHTINGS[lighting])
                if lighting not in cameras:
                    noise = {k: LIGHTINGS[lighting][k] for k in ("background_rate_hz", "shot_noise_rate_hz")}
                    cameras[lighting] = EventCameraModel(128, 128, seed=[seed, 12], **GESTURE_CAMERA, **noise)
                events = cameras[lighting].simulate(
                    scene,
                    duration_us=t - origin,
                    step_us=GESTURE_STEP_US,
                    start_us=origin,
                    noise_seed=[seed, 13, user, j],
                )
                name = f"user{user:02d}_{lighting}"
                write_aedat3(out / f"{name}.aedat", events, sensor_size=SensorSize(128, 128, 2))
                rows = "".join(f"{s.cls},{s.start_us},{s.end_us}\n" for s in segments)
                write_text(out / f"{name}_labels.csv", "class,startTime_usec,endTime_usec\n" + rows)
                written |= {out / f"{name}.aedat", out / f"{name}_labels.csv"}
                split = "test" if user > users - n_test_users else "train"
                trials[split].append(f"{name}.aedat")
                summary.append(
                    {
                        "file": f"{name}.aedat",
                        "user": user,
                        "lighting": lighting,
                        "split": split,
                        "gestures": len(segments),
                        "events": int(len(events)),
                        "duration_s": round((t - origin) * 1e-6, 3),
                    }
                )
                bar.update(len(segments))
    for split in ("train", "test"):
        write_text(out / f"trials_to_{split}.txt", "".join(f"{n}\n" for n in trials[split]))
        written.add(out / f"trials_to_{split}.txt")
    remove_stale(old, written)
    meta = {
        "generator": "events.simulate.simulate_gestures",
        "format_version": FORMAT_VERSION,
        "layout": "IBM DVS Gesture original release: userNN_<lighting>.aedat (AEDAT 3.1), "
        "userNN_<lighting>_labels.csv, trials_to_train.txt, trials_to_test.txt",
        "seed": seed,
        "users": users,
        "per_class": per_class,
        "lightings": lightings,
        "gesture_s": [g_min, g_max],
        "rest_s": list(GESTURE_REST_S),
        "render_step_us": GESTURE_STEP_US,
        "classes": list(GESTURE_CLASSES),
        "test_users": list(range(users - n_test_users + 1, users + 1)),
        "lighting_params": {name: LIGHTINGS[name] for name in lightings},
        "camera": {name: cam.params() for name, cam in sorted(cameras.items())},
        "recordings": summary,
    }
    readme = (
        "Synthetic DVS Gesture, made by events.simulate.simulate_gestures (not real sensor data).\n\n"
        "A simulated person (head, torso, two-link arms) performs DVS Gesture's 11 classes in front\n"
        "of a simulated 128x128 event camera (log-intensity pixels with threshold mismatch,\n"
        "refractory period, background and shot noise); users differ in position, size, tempo,\n"
        "amplitude, clothing and background, recordings in lighting.\n\n"
        "Layout (IBM's original release): userNN_<lighting>.aedat (AEDAT 3.1),\n"
        "userNN_<lighting>_labels.csv (class,startTime_usec,endTime_usec; class 1..11),\n"
        "trials_to_train.txt / trials_to_test.txt. Load with events.DVSGesture(root, train=True/False).\n"
        f"Classes: {', '.join(f'{i + 1} {c}' for i, c in enumerate(GESTURE_CLASSES))}.\n"
        f"Users: {users} ({users - n_test_users} train, {n_test_users} test); {per_class} repetition(s) of each\n"
        f"class per user; seed {seed}. All parameters: simulation.json.\n"
    )
    write_meta(out, meta, readme)
    return out
