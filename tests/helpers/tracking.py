"""Shared test helpers (moved from tests/subjects/test_tracker.py so that no test imports another test module)."""

from __future__ import annotations

import itertools

from vstmon.subjects.tracker import Track

# person -> {vtest.avi frame index: (x0, y0, x1, y1) in pixels}, every 10 frames (1 s)
PEOPLE_PX: dict[str, dict[int, tuple[int, int, int, int]]] = {
    # red jacket, jeans: enters at the right edge, crosses the whole walkway to the left edge, passing a man in
    # black (460) and the sign post (480)
    "red jacket": {
        430: (685, 272, 720, 375), 440: (617, 256, 647, 352), 450: (561, 242, 592, 337), 460: (510, 237, 546, 316),
        470: (459, 215, 484, 301), 480: (407, 218, 432, 288), 490: (360, 192, 386, 275), 500: (306, 185, 332, 265),
        510: (262, 182, 287, 257), 520: (225, 177, 252, 250), 530: (189, 172, 219, 242), 540: (160, 169, 186, 236),
        550: (125, 166, 155, 232), 560: (84, 170, 112, 237), 570: (27, 176, 47, 244),
    },
    # bald man, dark jacket, jeans: enters at the right edge, walks up the road, is not detected for ~1.5 s while
    # far away (140-150), turns back (150) through a couple walking up (156), walks down past the sign post
    # (hidden behind it ~2 s, 200-218) and along the path to the left, where he turns again (285)
    "bald man": {
        40: (735, 280, 768, 395), 50: (668, 257, 716, 368), 60: (616, 232, 652, 340), 70: (587, 210, 620, 307),
        80: (569, 189, 600, 282), 90: (571, 171, 597, 260), 100: (590, 152, 617, 234), 110: (617, 140, 645, 215),
        120: (650, 130, 675, 204), 130: (684, 120, 702, 187), 140: (705, 112, 725, 177), 150: (713, 110, 728, 175),
        160: (673, 115, 695, 181), 170: (634, 120, 657, 190), 180: (587, 130, 617, 200), 190: (541, 135, 567, 210),
        200: (487, 145, 517, 222), 210: (430, 155, 460, 230), 220: (365, 160, 400, 240), 230: (292, 160, 320, 240),
        240: (236, 155, 265, 232), 250: (194, 151, 221, 225), 260: (162, 145, 188, 217), 270: (132, 142, 155, 209),
        280: (115, 146, 140, 215),
    },
    # white hood, light blue jacket, bag: from the right (120) behind a man in black (130, not annotated) and
    # past the sign post among three men (150-160) to the left edge
    "white hood": {
        120: (693, 210, 720, 302), 140: (515, 190, 554, 270), 150: (442, 179, 470, 255), 160: (350, 172, 380, 245),
        170: (280, 166, 312, 237), 180: (200, 161, 230, 230), 190: (141, 156, 166, 221), 200: (84, 154, 111, 215),
        210: (30, 148, 52, 206),
    },
    # red and navy jacket: enters at the bottom beside a blond woman, walks diagonally up to the road, turns left
    # past a man in black (680) to the sign post
    "red-navy jacket": {
        570: (190, 345, 232, 482), 580: (232, 336, 277, 469), 590: (345, 316, 382, 435), 600: (455, 302, 505, 417),
        610: (535, 294, 580, 400), 620: (580, 261, 617, 366), 630: (621, 235, 657, 335), 640: (646, 211, 680, 304),
        650: (640, 194, 670, 280), 660: (619, 177, 645, 257), 670: (576, 162, 600, 239), 680: (517, 156, 537, 230),
        690: (450, 152, 472, 225),
    },
    # black jacket, jeans: enters at the right edge (overlapping a man in a long coat at 590), walks left behind
    # the sign post (630) along the path
    "black jacket": {
        580: (677, 231, 715, 327), 590: (622, 191, 655, 305), 600: (570, 200, 597, 287), 610: (507, 190, 540, 272),
        620: (460, 172, 492, 252), 630: (405, 162, 440, 230), 640: (362, 160, 392, 232), 650: (316, 157, 345, 229),
        660: (267, 152, 300, 228),
    },
    # bearded man, dark jacket, jeans: from the sign post down to the right edge
    "bearded man": {
        330: (479, 150, 504, 219), 340: (475, 160, 504, 237), 350: (472, 187, 510, 276), 360: (529, 194, 569, 286),
        370: (591, 203, 630, 296), 380: (657, 212, 692, 309), 390: (722, 224, 755, 324),
    },
}  # fmt: skip

VTEST_FPS = 10.0

VTEST_SIZE_PX = (768, 576)  # width, height

MATCH_IOU = 0.3  # an annotated person and a track's box (rough boxes drawn by eye)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def follow(steps: dict[int, tuple[list[Track], list[Track]]], annotated: dict[int, tuple[int, ...]]) -> list:
    """The id of the confirmed live track on the annotated person at each annotated frame (None: no track)."""
    scale = VTEST_SIZE_PX * 2
    sequence = []
    for index, box_px in sorted(annotated.items()):
        box = tuple(v / s for v, s in zip(box_px, scale, strict=True))
        live = [t for t in steps[index][1] if t.confirmed]
        best = max(((iou(box, t.box), t.track_id) for t in live), default=(0.0, None))
        sequence.append(best[1] if best[0] >= MATCH_IOU else None)
    return sequence


def switches(sequence: list) -> int:
    """How often the id on a person changes (frames without a track do not count)."""
    seen = [i for i in sequence if i is not None]
    return sum(1 for a, b in itertools.pairwise(seen) if a != b)
