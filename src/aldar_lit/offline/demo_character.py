"""Built-in synthetic "demo character" dataset: Aldar Köse drawn procedurally with PIL.

``generate_demo_dataset(out_dir)`` writes ``000.png``/``000.txt`` image-caption pairs and a
``dataset.json`` manifest, deterministically from its arguments, so the LoRA quickstart runs
offline. The Kazakh folk trickster keeps his identity cues (tall pointed felt hat with a white fur
brim, wide toothy smile, moustache and goatee, skin tone) while view, pose, shot, robe colour and
background vary per image.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from aldar_lit.atomic_write import replacing_dir
from aldar_lit.config.shared import TRIGGER

FORMAT_VERSION = 1

# Caption phrase -> head turn (-1 = profile facing the viewer's left, +1 = facing right).
_VIEW_TURN = {
    "front view": 0.0,
    "three-quarter view facing left": -0.5,
    "three-quarter view facing right": 0.5,
    "side view facing left": -1.0,
    "side view facing right": 1.0,
}
VIEWS = tuple(_VIEW_TURN)
POSES = ("standing", "walking", "waving", "pointing", "arms raised", "sitting")
SHOTS = ("full body", "medium shot")
_GRADIENTS = {
    "against a warm orange to yellow gradient background": ((244, 128, 44), (255, 224, 120)),
    "against a sky blue gradient background": ((70, 140, 224), (210, 236, 252)),
    "against a dusk purple gradient background": ((56, 32, 98), (226, 122, 150)),
}
_STEPPE, _YURT = "on the open steppe under a blue sky", "on the steppe in front of a white yurt"
BACKGROUNDS = (*_GRADIENTS, _STEPPE, _YURT)
# Robe colour name -> (robe, ornament trim, sash).
_ROBES = {
    "blue": ((36, 70, 150), (236, 188, 66), (186, 40, 40)),
    "red": ((164, 34, 40), (240, 200, 92), (40, 92, 60)),
    "green": ((34, 104, 62), (236, 190, 70), (176, 40, 44)),
    "purple": ((94, 44, 118), (236, 196, 92), (222, 162, 48)),
}
_SKIN, _SHADE, _HAIR = (226, 174, 128), (192, 134, 96), (46, 30, 22)
_HAT, _FUR, _BOOT, _TROUSERS = (166, 102, 50), (246, 242, 232), (58, 36, 26), (52, 44, 40)
# Pose -> (elbow, hand) of the active arm, then of the other arm; x > 0 is the active side.
_REST = ((-1.25, -4.3), (-1.3, -3.2))
_ARMS = {
    "standing": (((1.25, -4.3), (1.3, -3.2)), _REST),
    "walking": (((1.4, -4.4), (1.75, -3.5)), ((-1.05, -4.3), (-0.75, -3.3))),
    "waving": (((1.8, -5.6), (2.0, -6.9)), _REST),
    "pointing": (((1.9, -5.25), (2.8, -5.35)), _REST),
    "arms raised": (((1.7, -6.0), (1.9, -7.2)), ((-1.7, -6.0), (-1.9, -7.2))),
    "sitting": (((1.45, -3.9), (1.6, -3.0)), ((-1.45, -3.9), (-1.6, -3.0))),
}
_TIP, _WAIST, _SIT_DROP = -9.6, -3.2, 1.6  # figure units, feet at y = 0


def _deck(rng: random.Random, items: tuple, n: int) -> list:
    """n picks that cover ``items`` evenly: concatenated shuffled copies."""
    picks: list = []
    while len(picks) < n:
        picks += rng.sample(items, len(items))
    return picks[:n]


def _gradient(w: int, h: int, top, bottom) -> Image.Image:
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    rows = np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t
    return Image.fromarray(np.broadcast_to(rows, (h, w, 3)).round().astype(np.uint8))


def _draw_background(img: Image.Image, kind: str, rng: random.Random) -> None:
    w = img.width
    if kind in _GRADIENTS:
        img.paste(_gradient(w, w, *_GRADIENTS[kind]))
        return
    horizon = int(w * rng.uniform(0.55, 0.68))
    img.paste(_gradient(w, horizon, (96, 160, 228), (214, 234, 248)))
    img.paste(_gradient(w, w - horizon, (186, 196, 104), (92, 146, 58)), (0, horizon))
    d = ImageDraw.Draw(img)
    hills = [(0, horizon)] + [(x, horizon - rng.uniform(0.01, 0.06) * w) for x in np.linspace(0, w, 7)]
    d.polygon(hills + [(w, horizon)], fill=(140, 168, 132))
    for _ in range(40):
        x, y = rng.uniform(0, w), rng.uniform(horizon + 0.02 * w, w)
        tuft = [(x, y), (x + rng.uniform(-0.01, 0.01) * w, y - 0.02 * w)]
        d.line(tuft, fill=(70, 120, 44), width=max(1, w // 200))
    if kind == _YURT:  # felt walls with a lattice band, domed roof, crown ring and an ornamented door
        cx, base, half = w * (0.5 + rng.choice((-0.3, 0.3))), horizon + 0.06 * w, 0.17 * w
        top, edge = base - 0.12 * w, {"outline": (150, 120, 90), "width": 3}
        d.pieslice([cx - half, top - 0.1 * w, cx + half, top + 0.1 * w], 180, 360, fill=(236, 230, 216), **edge)
        d.rectangle([cx - half, top, cx + half, base], fill=(244, 240, 228), **edge)
        for x in np.linspace(cx - half, cx + half, 9)[:-1]:
            d.line([(x, top + 0.02 * w), (x + half / 4, top + 0.05 * w)], fill=(170, 110, 60), width=3)
            d.line([(x + half / 4, top + 0.02 * w), (x, top + 0.05 * w)], fill=(170, 110, 60), width=3)
        door = [cx - 0.035 * w, base - 0.08 * w, cx + 0.035 * w, base]
        d.rectangle(door, fill=(196, 70, 40), outline=(236, 188, 66), width=3)
        d.ellipse([cx - 0.03 * w, top - 0.115 * w, cx + 0.03 * w, top - 0.085 * w], fill=(150, 100, 60))


def _draw_figure(img: Image.Image, turn: float, pose: str, shot: str, robe: str, rng: random.Random) -> None:
    w = img.width
    drop = _SIT_DROP if pose == "sitting" else 0.0
    if shot == "full body":
        s, base = 0.86 * w / -_TIP, 0.95 * w
    else:  # medium shot: scale up and crop at the waist
        s = 0.92 * w / (_WAIST - _TIP)
        base = w - (_WAIST + drop) * s
    cx = w * (0.5 + rng.uniform(-0.06, 0.06))
    d = ImageDraw.Draw(img)

    def p(x: float, y: float, body: bool = True) -> tuple[float, float]:
        return cx + x * s, base + (y + drop * body) * s

    def ell(x: float, y: float, rx: float, ry: float, body: bool = True, **kw) -> None:
        d.ellipse([*p(x - rx, y - ry, body), *p(x + rx, y + ry, body)], **kw)

    def poly(points, body: bool = True, **kw) -> None:
        d.polygon([p(x, y, body) for x, y in points], **kw)

    def limb(points, width: float, fill, body: bool = True) -> None:
        d.line([p(x, y, body) for x, y in points], fill=fill, width=max(1, round(width * s)), joint="curve")
        for x, y in points:
            ell(x, y, width / 2, width / 2, body, fill=fill)

    side = -1.0 if turn < 0 else 1.0  # the active arm and the boot toes follow the facing direction
    bw, hem = 1 - 0.3 * abs(turn), -2.2 if drop else -1.2
    if drop:  # cross-legged on a felt rug
        ell(0, 0, 2.4, 0.3, False, fill=(150, 40, 40), outline=(236, 188, 66), width=max(1, round(0.1 * s)))
        ell(0, -0.45, 1.75, 0.45, False, fill=_TROUSERS)
        feet = [(-1.55, -0.3, -1.0), (1.55, -0.3, 1.0)]
    else:
        feet = [(-0.75, 0, -1.0), (0.65, 0, 1.0)] if pose == "walking" else [(-0.45, 0, -1.0), (0.45, 0, 1.0)]
        for fx, _, _ in feet:
            limb([(fx * 0.6, -1.6), (fx, -0.6)], 0.5, _TROUSERS, body=False)
    for fx, fy, outward in feet:
        toe = side if turn else outward
        ell(fx, fy - 0.4, 0.27, 0.4, False, fill=_BOOT)
        poly([(fx - 0.25, fy - 0.25), (fx + toe * 0.6, fy - 0.3), (fx + toe * 0.35, fy)], body=False, fill=_BOOT)

    colour, trim, sash = _ROBES[robe]
    half = lambda y: bw * (1.0 + 0.4 * (y + 5.5) / (hem + 5.5))  # noqa: E731 - robe flares to the hem
    poly([(-half(-5.5), -5.5), (half(-5.5), -5.5), (half(hem), hem), (-half(hem), hem)], fill=colour)
    ell(0, -5.4, bw, 0.35, fill=colour)
    poly([(-half(hem), hem - 0.35), (half(hem), hem - 0.35), (half(hem), hem), (-half(hem), hem)], fill=trim)
    for x in np.arange(-half(hem) + 0.25, half(hem) - 0.1, 0.42):  # ornament row above the hem
        poly([(x, hem - 0.75), (x + 0.14, hem - 0.55), (x, hem - 0.4), (x - 0.14, hem - 0.55)], fill=trim)
    opening = turn * 0.45
    poly([(opening - 0.3, -5.6), (opening + 0.3, -5.6), (opening, -4.5)], fill=(240, 236, 224))
    limb([(opening - 0.3, -5.6), (opening, -4.5), (opening + 0.3, -5.6)], 0.12, trim)
    limb([(opening, -4.5), (opening, hem)], 0.12, trim)
    poly([(-half(-3.45), -3.45), (half(-3.45), -3.45), (half(-3.0), -3.0), (-half(-3.0), -3.0)], fill=sash)
    poly([(side * 0.5, -3.2), (side * 0.75, -2.2), (side * 0.35, -2.3)], fill=sash)

    for arm, sign in zip(_ARMS[pose], (side, -side)):
        elbow, hand = ((x * side, y) for x, y in arm)
        shoulder = (sign * 0.9 * bw, -5.3)
        limb([shoulder, elbow, hand], 0.46, colour)
        cuff = (elbow[0] + 0.8 * (hand[0] - elbow[0]), elbow[1] + 0.8 * (hand[1] - elbow[1]))
        limb([cuff, hand], 0.48, trim)
        if pose == "pointing" and sign == side:
            limb([hand, (hand[0] + side * 0.45, hand[1] - 0.05)], 0.1, _SKIN)
        ell(*hand, 0.22, 0.22, fill=_SKIN)

    hx, hy = turn * 0.1, -6.15  # head centre; the face is shifted towards the facing direction
    rx, fx = 0.55 * (1 - 0.12 * abs(turn)), hx + turn * 0.3
    poly([(hx - 0.2, -5.7), (hx + 0.2, -5.7), (hx + 0.2, -5.35), (hx - 0.2, -5.35)], fill=_SKIN)
    for ear in (-1, 1) if turn == 0 else ((-side,) if abs(turn) < 1 else ()):
        ell(hx + ear * rx, hy, 0.12, 0.18, fill=_SHADE)
    ell(hx, hy, rx, 0.66, fill=_SKIN)
    if abs(turn) == 1:
        ell(hx - side * 0.12, hy, 0.08, 0.12, fill=_SHADE)  # the one visible ear
        poly([(fx + side * 0.18, -6.25), (fx + side * 0.36, -5.98), (fx + side * 0.18, -5.96)], fill=_SKIN)
    else:
        ell(fx + turn * 0.1, -6.02, 0.07, 0.05, fill=_SHADE)
    eye_dx = 0.2 * (1 - 0.4 * abs(turn))
    eyes = [hx + side * 0.28] if abs(turn) == 1 else [fx - eye_dx, fx + eye_dx]
    for ex in eyes:
        ell(ex, -6.25, 0.065, 0.085, fill=_HAIR)
        limb([(ex - 0.1, -6.4), (ex, -6.44), (ex + 0.1, -6.4)], 0.04, _HAIR)
        ell(ex, -6.03, 0.09, 0.05, fill=(232, 146, 122))
    mx, my, mw = fx, -5.83, 0.3 * (1 - 0.45 * abs(turn))  # the wide smile with teeth
    d.chord([*p(mx - mw, my - 0.16), *p(mx + mw, my + 0.16)], 0, 180, fill=(136, 36, 36))
    d.chord([*p(mx - mw * 0.85, my - 0.06), *p(mx + mw * 0.85, my + 0.06)], 0, 180, fill=(250, 250, 246))
    for m in (-1, 1):
        poly([(mx, my - 0.06), (mx + m * mw * 1.15, my - 0.02), (mx + m * mw, my - 0.13), (mx, my - 0.16)], fill=_HAIR)
    poly([(mx - 0.12, my + 0.2), (mx + 0.12, my + 0.2), (mx + turn * 0.08, my + 0.52)], fill=_HAIR)

    tip = hx + turn * 0.55  # tall pointed felt hat, leaning with the head turn
    bend = hx + turn * 0.3
    poly([(hx - 0.58, -6.8), (bend - 0.24, -8.3), (tip, _TIP), (bend + 0.24, -8.3), (hx + 0.58, -6.8)], fill=_HAT)
    limb([(hx, -6.9), (bend, -8.3), (tip, _TIP + 0.1)], 0.07, (120, 66, 34))
    ell(hx, -6.78, 0.75, 0.22, fill=_FUR, outline=(206, 200, 188), width=max(1, round(0.04 * s)))


def _is_generated(out: Path, args: dict) -> bool:
    """Whether ``out`` holds a finished dataset of this format generated with ``args``."""
    try:
        manifest = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and (manifest.get("format_version"), manifest.get("args")) == (FORMAT_VERSION, args)


def generate_demo_dataset(
    out_dir: str | os.PathLike,
    num_images: int = 24,
    size: int = 256,
    seed: int = 0,
    trigger: str = TRIGGER,
) -> Path:
    """Write num_images PNGs (000.png ...) each with a sidecar caption 000.txt into out_dir; return out_dir."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    out = Path(out_dir)
    args = {"num_images": num_images, "size": size, "seed": seed, "trigger": trigger}
    if _is_generated(out, args):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not a demo dataset generated with {args}; use another directory")
    try:
        with replacing_dir(out, replace_existing=False) as tmp:  # an empty `out` is replaced
            rng = random.Random(seed)
            attributes = (VIEWS, POSES, SHOTS, BACKGROUNDS, tuple(_ROBES))
            picks = zip(*(_deck(rng, items, num_images) for items in attributes))
            images, digits = [], max(3, len(str(num_images - 1)))
            for i, (view, pose, shot, background, robe) in enumerate(picks):
                img = Image.new("RGB", (2 * size, 2 * size))
                _draw_background(img, background, rng)
                _draw_figure(img, _VIEW_TURN[view], pose, shot, robe, rng)
                name = f"{i:0{digits}d}"
                img.resize((size, size), Image.LANCZOS).save(tmp / f"{name}.png")
                caption = (
                    f"{trigger}, a cheerful man with a tall pointed felt hat, a wide smile and a long {robe} "
                    f"patterned robe, {shot}, {view}, {pose}, {background}."
                )
                (tmp / f"{name}.txt").write_text(caption, encoding="utf-8")
                images.append({"image": f"{name}.png", "caption_file": f"{name}.txt", "view": view, "pose": pose,
                               "shot": shot, "background": background, "robe": robe})
            manifest = {"format_version": FORMAT_VERSION, "args": args, "images": images}
            (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    except OSError:
        if _is_generated(out, args):  # a concurrent call (e.g. another rank) finished the same dataset first
            return out
        raise
    return out
