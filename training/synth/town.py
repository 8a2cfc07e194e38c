"""A procedural town on a street grid, deterministic per seed: city blocks, textured facades, street ground, trees, lamps.

Local metric frame: x east, y north (metres). Blocks are axis-aligned rectangles bounded by streets; each street-facing
block side is split into buildings whose facades are painted once into one texture atlas (rows = height above ground,
columns = metres along the sides, `texels_per_m` per metre), which the renderer samples per pixel.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

# pixel kinds in the facade atlas (lighting per condition depends on them)
WALL, WINDOW, SHOP_WINDOW, SIGN, DOOR, LEDGE = 0, 1, 2, 3, 4, 5
# pixel kinds in the ground map
ROAD, MARKING, PAVEMENT, CURB = 0, 1, 2, 3
# block sides, in the order of the perimeter coordinate; outward normals
SIDE_NORMALS = np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
RING_DEPTH_M = 25.0
MAX_HEIGHT_M = 26.0

_PLASTER = np.array(
    [
        [226, 214, 188], [214, 190, 150], [196, 162, 120], [232, 226, 214], [188, 196, 204], [170, 190, 205],
        [222, 188, 180], [205, 150, 130], [176, 196, 170], [150, 170, 150], [238, 220, 170], [200, 205, 210],
        [160, 150, 140], [214, 200, 226], [245, 240, 225], [210, 120, 90],
    ],
    dtype=np.float32,
)
_BRICK = np.array([[150, 70, 50], [170, 90, 60], [120, 60, 45], [180, 120, 90], [110, 80, 70]], dtype=np.float32)
_VIVID = np.array(
    [
        [200, 30, 30], [20, 110, 60], [20, 60, 160], [240, 190, 20], [30, 30, 30], [240, 240, 240],
        [130, 30, 120], [230, 110, 20], [20, 150, 170], [90, 50, 30],
    ],
    dtype=np.float32,
)
_SHOP_WORDS = (
    "CAFE", "BAKERY", "PIZZA", "BAR", "HOTEL", "APOTHEKE", "BOOKS", "SUSHI", "KEBAB", "BANK", "MARKT", "FLOWERS",
    "OPTIK", "SHOES", "DELI", "GELATO", "TABAK", "FRISEUR", "BIKES", "PHONE", "BISTRO", "KIOSK", "DONER", "BAGELS",
    "TEA", "WINE", "MUSIK", "SPORT", "TOYS", "NAILS", "TAXI", "POST", "HOSTEL", "RAMEN", "TACOS", "VINTAGE",
)
_LETTERS = "ABCDEFGHIJKLMNOPRSTUVWZ"


@dataclass(frozen=True)
class TownSpec:
    """Parameters of the town generator; the same spec always gives the same town."""

    seed: int = 0
    blocks_x: int = 5
    blocks_y: int = 5
    block_min_m: float = 45.0
    block_max_m: float = 75.0
    texels_per_m: int = 8
    ground_texels_per_m: int = 5

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.blocks_x < 1 or self.blocks_y < 1:
            raise ValueError(f"blocks_x and blocks_y must be >= 1, got {self.blocks_x}, {self.blocks_y}")
        if not 20.0 <= self.block_min_m <= self.block_max_m:
            raise ValueError(f"need 20 <= block_min_m <= block_max_m, got {self.block_min_m}, {self.block_max_m}")
        if not 2 <= self.texels_per_m <= 32 or not 1 <= self.ground_texels_per_m <= 32:
            raise ValueError("texels_per_m must be 2..32 and ground_texels_per_m 1..32")


@dataclass
class Town:
    """Geometry and textures of one town (see module docstring for the frames and layouts)."""

    spec: TownSpec
    xs: np.ndarray  # x of the north-south street centrelines
    ys: np.ndarray  # y of the east-west street centrelines
    road_half_x: np.ndarray  # half road width of each north-south street
    road_half_y: np.ndarray
    walk_x: np.ndarray  # pavement width of each north-south street
    walk_y: np.ndarray
    blocks: np.ndarray  # (B, 4) x0, y0, x1, y1
    side_offset: np.ndarray  # (B, 4) start of each side in the perimeter coordinate (metres)
    side_length: np.ndarray  # (B, 4) textured length of each side (0 for sides nobody sees)
    atlas: np.ndarray  # (rows, cols, 3) uint8 facade colours, row 0 = ground level
    atlas_kind: np.ndarray  # (rows, cols) uint8 pixel kind (WALL, WINDOW, ...)
    atlas_light: np.ndarray  # (rows, cols) uint8 per-window random number: lit at night when below a threshold
    column_height: np.ndarray  # (cols,) float32 building height per atlas column (metres)
    column_side: np.ndarray  # (cols,) uint8 side index (normal direction) per atlas column
    ground: np.ndarray  # (gh, gw, 3) uint8 ground colours, row 0 = ground_origin y
    ground_kind: np.ndarray  # (gh, gw) uint8
    ground_origin: tuple[float, float]
    trees: np.ndarray  # (N, 4) x, y, variant, height (metres)
    lamps: np.ndarray  # (M, 3) x, y, side (+1/-1 which way the arm points, unused by the billboard)
    n_buildings: int

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) of the drivable street network (centrelines)."""
        return float(self.xs[0]), float(self.ys[0]), float(self.xs[-1]), float(self.ys[-1])


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _streets(rng: np.random.Generator, n_blocks: int, spec: TownSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = n_blocks + 1
    road_half = rng.choice([3.5, 4.0, 4.5, 5.0], size=n)
    walk = rng.uniform(2.5, 4.5, size=n)
    centres = np.zeros(n)
    for i in range(1, n):
        block = rng.uniform(spec.block_min_m, spec.block_max_m)
        centres[i] = centres[i - 1] + road_half[i - 1] + walk[i - 1] + block + road_half[i] + walk[i]
    return centres, road_half, walk


def _blocks(xs, ys, ex, ey) -> tuple[np.ndarray, np.ndarray]:
    """Blocks between streets (ex, ey: half widths up to the building line) plus a closed ring; visible sides per block."""
    blocks, visible = [], []
    for j in range(len(ys) - 1):
        for i in range(len(xs) - 1):
            blocks.append([xs[i] + ex[i], ys[j] + ey[j], xs[i + 1] - ex[i + 1], ys[j + 1] - ey[j + 1]])
            visible.append([True, True, True, True])
    x_lo, x_hi = xs[0] - ex[0], xs[-1] + ex[-1]
    y_lo, y_hi = ys[0] - ey[0], ys[-1] + ey[-1]
    d = RING_DEPTH_M
    blocks += [
        [x_lo - d, y_lo - d, x_lo, y_hi + d],  # west ring: its east side faces the town
        [x_hi, y_lo - d, x_hi + d, y_hi + d],  # east ring
        [x_lo, y_lo - d, x_hi, y_lo],  # south ring
        [x_lo, y_hi, x_hi, y_hi + d],  # north ring
    ]
    visible += [[False, True, False, False], [False, False, False, True], [False, False, True, False], [True, False, False, False]]
    return np.array(blocks, dtype=np.float64), np.array(visible, dtype=bool)


def _split(rng: np.random.Generator, length: float) -> list[float]:
    widths: list[float] = []
    left = length
    while left > 0:
        w = float(rng.uniform(7.0, 22.0))
        if left - w < 6.0:
            w = left
        widths.append(w)
        left -= w
    return widths


def _glyph_text(rng: np.random.Generator) -> str:
    if rng.random() < 0.6:
        word = str(rng.choice(_SHOP_WORDS))
        if rng.random() < 0.4:
            name = "".join(rng.choice(list(_LETTERS), size=int(rng.integers(3, 6))))
            word = f"{name} {word}" if rng.random() < 0.5 else f"{word} {name}"
        return word
    return "".join(rng.choice(list(_LETTERS), size=int(rng.integers(4, 9))))


class _Painter:
    """Paints one facade (top-down image of the full atlas height) in metres from its bottom-left corner."""

    def __init__(self, width_m: float, rows: int, ppm: int, rng: np.random.Generator):
        self.ppm = ppm
        self.rows = rows
        self.w = max(1, int(round(width_m * ppm)))
        self.rgb = np.zeros((rows, self.w, 3), dtype=np.float32)
        self.kind = np.zeros((rows, self.w), dtype=np.uint8)
        self.light = np.full((rows, self.w), 255, dtype=np.uint8)
        self.rng = rng

    def box(self, u0: float, z0: float, u1: float, z1: float) -> tuple[slice, slice]:
        p = self.ppm
        c0, c1 = max(0, int(round(u0 * p))), min(self.w, int(round(u1 * p)))
        r0, r1 = max(0, self.rows - int(round(z1 * p))), min(self.rows, self.rows - int(round(z0 * p)))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def rect(self, u0, z0, u1, z1, colour, kind: int | None = None, light: int | None = None) -> None:
        sl = self.box(u0, z0, u1, z1)
        self.rgb[sl] = colour
        if kind is not None:
            self.kind[sl] = kind
        if light is not None:
            self.light[sl] = light


def _paint_building(rng: np.random.Generator, width: float, rows: int, ppm: int) -> tuple[_Painter, float]:
    """One building facade with its own colours, window grid, ground floor (shop with sign, or door)."""
    p = _Painter(width, rows, ppm, rng)
    office = rng.random() < 0.08
    floors = int(rng.choice([1, 2, 3, 3, 4, 4, 5, 5, 6, 7]))
    floor_h = float(rng.uniform(3.0, 3.5))
    ground_h = float(rng.uniform(3.6, 4.6))
    height = min(MAX_HEIGHT_M - 0.1, ground_h + floors * floor_h + float(rng.uniform(0.4, 1.2)))
    brick = not office and rng.random() < 0.2
    base = (_BRICK[rng.integers(len(_BRICK))] if brick else _PLASTER[rng.integers(len(_PLASTER))]).copy()
    base += rng.normal(0.0, 8.0, size=3)
    if office:
        base = np.array([90, 105, 115], dtype=np.float32) + rng.normal(0.0, 10.0, size=3)
    body = p.box(0, 0, width, height)
    h_px = body[0].stop - body[0].start
    noise = cv2.resize(rng.normal(0, 1, size=(max(2, h_px // 6), max(2, p.w // 6))).astype(np.float32), (p.w, h_px))
    p.rgb[body] = base + noise[..., None] * (9.0 if brick else 5.0)
    if brick:
        rows_m = np.arange(h_px)
        p.rgb[body][(rows_m % 3) == 0] *= 0.9
    trim = np.clip(base * float(rng.choice([0.7, 1.25])), 0, 255)
    frame = np.array([[245, 245, 240], [60, 55, 50], [110, 75, 45], [235, 230, 215]], dtype=np.float32)[rng.integers(4)]
    glass = np.array([55, 70, 88], dtype=np.float32) + rng.normal(0, 8, size=3)
    # upper floors: window grid
    spacing = float(rng.uniform(1.9, 2.6)) if office else float(rng.uniform(2.3, 3.6))
    n_cols = max(1, int((width - 1.0) // spacing))
    margin = (width - n_cols * spacing) / 2
    win_w = spacing - 0.25 if office else float(rng.uniform(0.9, min(1.6, spacing - 0.6)))
    win_h = floor_h - 0.5 if office else float(rng.uniform(1.3, 1.9))
    sill = 0.25 if office else float(rng.uniform(0.8, 1.0))
    shutters = not office and rng.random() < 0.2
    shutter_c = _VIVID[rng.integers(len(_VIVID))] * 0.8
    skip_col = int(rng.integers(n_cols)) if (n_cols > 3 and rng.random() < 0.25) else -1
    for k in range(floors):
        z = ground_h + k * floor_h + sill
        if z + win_h > height - 0.3:
            break
        for j in range(n_cols):
            if j == skip_col:
                continue
            u = margin + j * spacing + (spacing - win_w) / 2
            if shutters:
                p.rect(u - 0.45, z, u, z + win_h, shutter_c)
                p.rect(u + win_w, z, u + win_w + 0.45, z + win_h, shutter_c)
            p.rect(u - 0.1, z - 0.1, u + win_w + 0.1, z + win_h + 0.1, frame)
            shade = glass + float(rng.normal(0, 10)) + (rng.random() < 0.25) * np.float32(45.0)
            p.rect(u, z, u + win_w, z + win_h, shade, WINDOW, int(rng.integers(0, 255)))
            top = p.box(u, z + win_h * 0.55, u + win_w, z + win_h)
            p.rgb[top] += 22.0  # sky reflection on the upper pane
            if not office:
                p.rect(u - 0.15, z - 0.18, u + win_w + 0.15, z - 0.05, trim, LEDGE)
    # bands: between ground and first floor, cornice, roof edge
    if rng.random() < 0.6:
        p.rect(0, ground_h - 0.05, width, ground_h + 0.25, trim, LEDGE)
    p.rect(0, height - 0.45, width, height - 0.15, trim, LEDGE)
    p.rect(0, height - 0.15, width, height, base * 0.45)
    # ground floor
    if rng.random() < 0.6:
        _paint_shop(p, rng, width, ground_h, frame)
    else:
        _paint_entrance(p, rng, width, ground_h, spacing, n_cols, margin, frame, glass)
    p.rect(0, 0, width, 0.25, base * 0.6)  # plinth
    return p, height


def _paint_shop(p: _Painter, rng: np.random.Generator, width: float, ground_h: float, frame: np.ndarray) -> None:
    pillar = 0.4
    bays = max(1, int(width // 4.0))
    bay_w = (width - pillar) / bays
    door_bay = int(rng.integers(bays))
    shop_glass = np.array([70, 80, 85], dtype=np.float32) + rng.normal(0, 10, size=3)
    light = int(rng.integers(0, 255))
    for b in range(bays):
        u0 = pillar + b * bay_w
        u1 = u0 + bay_w - pillar
        p.rect(u0 - 0.05, 0.3, u1 + 0.05, ground_h - 1.15, frame * 0.6)
        if b == door_bay:
            mid = (u0 + u1) / 2
            p.rect(u0 + 0.1, 0.55, mid - 0.6, ground_h - 1.25, shop_glass, SHOP_WINDOW, light)
            p.rect(mid - 0.55, 0.0, mid + 0.55, 2.3, shop_glass * 0.8, DOOR)
            p.rect(mid + 0.6, 0.55, u1 - 0.1, ground_h - 1.25, shop_glass, SHOP_WINDOW, light)
        else:
            p.rect(u0 + 0.1, 0.55, u1 - 0.1, ground_h - 1.25, shop_glass, SHOP_WINDOW, light)
    # sign band with lettering
    sign_c = _VIVID[rng.integers(len(_VIVID))]
    text_c = np.array([255, 255, 255], np.float32) if sign_c.mean() < 140 else np.array([25, 25, 25], np.float32)
    if rng.random() < 0.3:
        text_c = _VIVID[rng.integers(len(_VIVID))]
    full = rng.random() < 0.5
    s0, s1 = (0.2, width - 0.2) if full else (width * 0.2, width * 0.8)
    z0, z1 = ground_h - 1.05, ground_h - 0.2
    sl = p.box(s0, z0, s1, z1)
    h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
    if h < 3 or w < 6:
        return
    sign = np.empty((h, w, 3), dtype=np.uint8)
    sign[:] = np.clip(sign_c, 0, 255).astype(np.uint8)
    text = _glyph_text(rng)
    scale = h / 26.0
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, max(1, int(scale * 1.5)))
    if tw > w * 0.95:
        scale *= w * 0.95 / tw
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, max(1, int(scale * 1.5)))
    org = ((w - tw) // 2, (h + th) // 2)
    cv2.putText(sign, text, org, cv2.FONT_HERSHEY_DUPLEX, scale, tuple(int(c) for c in text_c), max(1, int(scale * 1.5)), cv2.LINE_AA)
    p.rgb[sl] = sign
    p.kind[sl] = SIGN
    p.light[sl] = int(rng.integers(0, 255))
    if rng.random() < 0.35:  # striped awning below the sign
        awn_c = _VIVID[rng.integers(len(_VIVID))]
        box = p.box(s0, ground_h - 1.6, s1, ground_h - 1.1)
        cols = np.arange(box[1].stop - box[1].start)
        stripes = ((cols // max(1, p.ppm // 2)) % 2 == 0)[None, :, None]
        p.rgb[box] = np.where(stripes, awn_c, np.float32(235.0))


def _paint_entrance(p, rng, width, ground_h, spacing, n_cols, margin, frame, glass) -> None:
    door_c = np.array([[90, 55, 30], [40, 60, 40], [30, 40, 70], [120, 30, 30], [50, 50, 50]], np.float32)[rng.integers(5)]
    door_col = int(rng.integers(n_cols))
    for j in range(n_cols):
        u = margin + j * spacing + spacing / 2
        if j == door_col:
            p.rect(u - 0.75, 0.0, u + 0.75, 2.7, frame)
            p.rect(u - 0.6, 0.0, u + 0.6, 2.55, door_c, DOOR)
        else:
            p.rect(u - 0.6, 1.0, u + 0.6, 2.8, frame)
            p.rect(u - 0.5, 1.1, u + 0.5, 2.7, glass, WINDOW, int(rng.integers(0, 255)))


def _facades(rng: np.random.Generator, blocks: np.ndarray, visible: np.ndarray, ppm: int):
    sizes = np.stack(
        [blocks[:, 2] - blocks[:, 0], blocks[:, 3] - blocks[:, 1], blocks[:, 2] - blocks[:, 0], blocks[:, 3] - blocks[:, 1]], axis=1
    )
    lengths = np.where(visible, sizes, 0.0)
    # each side gets a whole number of texel columns; offsets in metres are multiples of 1/ppm
    cols_per_side = np.round(lengths * ppm).astype(np.int64)
    col_offset = np.concatenate([[0], np.cumsum(cols_per_side.ravel())[:-1]]).reshape(lengths.shape)
    total = int(cols_per_side.sum())
    rows = int(np.ceil(MAX_HEIGHT_M * ppm)) + 1
    atlas = np.zeros((rows, total, 3), dtype=np.uint8)
    kind = np.zeros((rows, total), dtype=np.uint8)
    light = np.full((rows, total), 255, dtype=np.uint8)
    col_height = np.zeros(total, dtype=np.float32)
    col_side = np.zeros(total, dtype=np.uint8)
    n = 0
    for b in range(len(blocks)):
        for s in range(4):
            if cols_per_side[b, s] == 0:
                continue
            c = int(col_offset[b, s])
            end = c + int(cols_per_side[b, s])
            col_side[c:end] = s
            for w in _split(rng, cols_per_side[b, s] / ppm):
                painter, height = _paint_building(rng, w, rows, ppm)
                wpx = min(painter.w, end - c)
                # atlas rows are bottom-up (row 0 = ground), painters draw top-down
                atlas[:, c : c + wpx] = np.clip(painter.rgb[::-1, :wpx], 0, 255).astype(np.uint8)
                kind[:, c : c + wpx] = painter.kind[::-1, :wpx]
                light[:, c : c + wpx] = painter.light[::-1, :wpx]
                col_height[c : c + wpx] = height
                c += wpx
                n += 1
            if c < end:  # rounding remainder: extend the last building
                atlas[:, c:end] = atlas[:, c - 1 : c]
                kind[:, c:end] = kind[:, c - 1 : c]
                light[:, c:end] = light[:, c - 1 : c]
                col_height[c:end] = col_height[c - 1]
    return lengths, col_offset / ppm, atlas, kind, light, col_height, col_side, n


def _ground(rng, xs, ys, rhx, rhy, wx, wy, blocks, gppm):
    x0, y0 = blocks[:, 0].min(), blocks[:, 1].min()
    x1, y1 = blocks[:, 2].max(), blocks[:, 3].max()
    gw, gh = int(np.ceil((x1 - x0) * gppm)) + 1, int(np.ceil((y1 - y0) * gppm)) + 1
    gx = (np.arange(gw) + 0.5) / gppm + x0
    gy = (np.arange(gh) + 0.5) / gppm + y0
    rgb = np.empty((gh, gw, 3), dtype=np.float32)
    kind = np.full((gh, gw), PAVEMENT, dtype=np.uint8)
    # pavement: tiles with joints, a tone per town quarter
    tone = np.array([[175, 172, 165], [185, 160, 150], [165, 165, 170], [190, 180, 160]], np.float32)
    quarter = (gx[None, :] > np.median(xs)).astype(int) + 2 * (gy[:, None] > np.median(ys)).astype(int)
    rgb[:] = tone[quarter]
    tile = max(2, int(round(0.8 * gppm)))
    joints = ((np.arange(gh) % tile == 0)[:, None]) | ((np.arange(gw) % tile == 0)[None, :])
    rgb[joints] *= 0.85
    coarse = rng.normal(0, 1, size=(max(2, gh // 8), max(2, gw // 8))).astype(np.float32)
    noise = cv2.resize(coarse, (gw, gh), interpolation=cv2.INTER_LINEAR)
    fine = rng.normal(0, 1, size=(gh, gw)).astype(np.float32)

    asphalt = np.float32([78, 78, 82])
    # pass over both street directions on transposed views: "across" is the image column axis of the view
    views = ((rgb, kind, gx, gy, x0, xs, rhx, ys, rhy), (rgb.transpose(1, 0, 2), kind.T, gy, gx, y0, ys, rhy, xs, rhx))
    for v_rgb, v_kind, across, along, origin, centres, halves, _, _ in views:
        for c, h in zip(centres, halves):
            road = slice(max(0, int((c - h - origin) * gppm)), int((c + h - origin) * gppm))
            v_rgb[:, road] = asphalt
            v_kind[:, road] = ROAD
    for v_rgb, v_kind, across, along, origin, centres, halves, other_c, other_h in views:
        in_cross = np.zeros(along.shape, dtype=bool)
        near_junction = np.zeros(along.shape, dtype=bool)
        zebra = np.zeros(along.shape, dtype=bool)
        for oc, oh in zip(other_c, other_h):
            d = np.abs(along - oc) - oh
            in_cross |= d < 0
            near_junction |= d < 5.5
            zebra |= (d > 1.5) & (d < 4.5)
        dash = np.mod(along - along[0], 9.0) < 3.0
        for c, h in zip(centres, halves):
            for lo, hi in ((c - h - 0.25, c - h), (c + h, c + h + 0.25)):
                cols = np.flatnonzero((across >= lo) & (across < hi))
                sel = np.ix_(np.flatnonzero(~in_cross), cols)
                v_rgb[sel] = (200, 198, 192)
                v_kind[sel] = CURB
            line = np.flatnonzero(np.abs(across - c) < max(0.08, 0.5 / gppm))
            sel = np.ix_(np.flatnonzero(dash & ~near_junction), line)
            v_rgb[sel] = 235
            v_kind[sel] = MARKING
            stripes = np.flatnonzero((np.abs(across - c) < h - 0.3) & (np.mod(across - (c - h), 1.0) < 0.5))
            sel = np.ix_(np.flatnonzero(zebra), stripes)
            v_rgb[sel] = 235
            v_kind[sel] = MARKING
    is_road = kind == ROAD
    rgb += (noise * 6.0 + fine * np.where(is_road, 3.5, 2.0))[..., None]
    # manholes and patches on the roads
    for _ in range(int(len(xs) * len(ys) * 3)):
        cx_, cy_ = rng.uniform(x0, x1), rng.uniform(y0, y1)
        i, j = int((cy_ - y0) * gppm), int((cx_ - x0) * gppm)
        if 0 <= i < gh and 0 <= j < gw and is_road[i, j]:
            cv2.circle(rgb, (j, i), int(0.35 * gppm) + 1, (55.0, 55.0, 58.0), -1)
    return np.clip(rgb, 0, 255).astype(np.uint8), kind, (float(x0), float(y0))


def _street_objects(rng, xs, ys, rhx, rhy, wx, wy) -> tuple[np.ndarray, np.ndarray]:
    trees, lamps = [], []
    for axis, centres, halves, walks, other_c, other_h in ((0, xs, rhx, wx, ys, rhy + wy), (1, ys, rhy, wy, xs, rhx + wx)):
        lo, hi = other_c[0] - other_h[0], other_c[-1] + other_h[-1]
        for c, h, w in zip(centres, halves, walks):
            for side in (-1.0, 1.0):
                tree_spacing = float(rng.uniform(9.0, 16.0))
                has_trees = rng.random() < 0.7
                pos = lo + float(rng.uniform(0, tree_spacing))
                while pos < hi:
                    if has_trees and np.all(np.abs(pos - other_c) > other_h + 4.0) and rng.random() < 0.85:
                        off = c + side * (h + min(1.2, w * 0.4))
                        xy = (off, pos) if axis == 0 else (pos, off)
                        trees.append([*xy, int(rng.integers(0, 4)), float(rng.uniform(5.5, 9.5))])
                    pos += tree_spacing
                lamp_spacing = float(rng.uniform(22.0, 32.0))
                pos = lo + float(rng.uniform(0, lamp_spacing)) + (lamp_spacing / 2 if side > 0 else 0.0)
                while pos < hi:
                    if np.all(np.abs(pos - other_c) > other_h + 1.0):
                        off = c + side * (h + 0.5)
                        xy = (off, pos) if axis == 0 else (pos, off)
                        lamps.append([*xy, -side])
                    pos += lamp_spacing
    trees_a = np.array(trees, dtype=np.float64).reshape(-1, 4)
    lamps_a = np.array(lamps, dtype=np.float64).reshape(-1, 3)
    # keep trees away from lamps
    if len(trees_a) and len(lamps_a):
        d = np.linalg.norm(trees_a[:, None, :2] - lamps_a[None, :, :2], axis=2).min(axis=1)
        trees_a = trees_a[d > 2.0]
    return trees_a, lamps_a


def build_town(spec: TownSpec) -> Town:
    """Generate the town for `spec` (deterministic: same spec, same arrays)."""
    spec.validate()
    xs, rhx, wx = _streets(_rng(spec.seed, 1), spec.blocks_x, spec)
    ys, rhy, wy = _streets(_rng(spec.seed, 2), spec.blocks_y, spec)
    blocks, visible = _blocks(xs, ys, rhx + wx, rhy + wy)
    lengths, offsets, atlas, kind, light, col_h, col_side, n = _facades(_rng(spec.seed, 3), blocks, visible, spec.texels_per_m)
    ground, gkind, gorigin = _ground(_rng(spec.seed, 4), xs, ys, rhx, rhy, wx, wy, blocks, spec.ground_texels_per_m)
    trees, lamps = _street_objects(_rng(spec.seed, 5), xs, ys, rhx, rhy, wx, wy)
    log.info(
        "town seed %d: %dx%d blocks, %d buildings, %d trees, %d lamps, atlas %dx%d, ground %dx%d",
        spec.seed, spec.blocks_x, spec.blocks_y, n, len(trees), len(lamps), atlas.shape[0], atlas.shape[1], *ground.shape[:2],
    )
    return Town(
        spec=spec, xs=xs, ys=ys, road_half_x=rhx, road_half_y=rhy, walk_x=wx, walk_y=wy, blocks=blocks,
        side_offset=offsets, side_length=lengths, atlas=atlas, atlas_kind=kind, atlas_light=light,
        column_height=col_h, column_side=col_side, ground=ground, ground_kind=gkind, ground_origin=gorigin,
        trees=trees, lamps=lamps, n_buildings=n,
    )
