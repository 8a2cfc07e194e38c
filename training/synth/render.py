"""Street-level frames of a procedural town by 2.5D column ray casting, vectorised in numpy (no GPU).

Per image column a ray is cut with all block rectangles (slab test) giving the facade depth and texture column; per pixel
the facade atlas, the ground map (ground-plane projection) or a sky panorama is gathered from one packed uint32 table
baked per lighting condition. Trees and street lamps are depth-tested billboards; fog blends by distance.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from training.synth.town import (
    CURB,
    DOOR,
    LEDGE,
    MARKING,
    PAVEMENT,
    ROAD,
    SHOP_WINDOW,
    SIDE_NORMALS,
    SIGN,
    WINDOW,
    Town,
)

SKY, FACADE, GROUND = 0, 1, 2


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking horizontally, mounted `height_m` above the road."""

    width: int = 640
    height: int = 480
    hfov_deg: float = 90.0
    height_m: float = 1.6

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"image size must be 16..4096 pixels, got {self.width}x{self.height}")
        if not 20.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"hfov_deg must be 20..150, got {self.hfov_deg}")
        if not 0.3 <= self.height_m <= 5.0:
            raise ValueError(f"camera height_m must be 0.3..5, got {self.height_m}")

    @property
    def fx(self) -> float:
        """Focal length in pixels (square pixels: fy = fx)."""
        return self.width / 2.0 / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def cx(self) -> float:
        """Principal point column."""
        return self.width / 2.0

    @property
    def cy(self) -> float:
        """Principal point row."""
        return self.height / 2.0


@dataclass(frozen=True)
class Condition:
    """Lighting and weather of a drive: colours as RGB 0..255, gains as multipliers, fractions 0..1."""

    name: str
    ambient: tuple[float, float, float]
    sun_azimuth_deg: float  # direction the sunlight comes from, counter-clockwise from east
    sun_strength: float
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    cloud_colour: tuple[float, float, float]
    cloud_amount: float
    fog_m: float = 0.0  # 0: no fog; else distance at which 63% of the colour is fog
    fog_colour: tuple[float, float, float] = (200.0, 200.0, 200.0)
    windows_lit: float = 0.0
    shops_lit: float = 0.0
    signs_lit: float = 0.0
    lamps_on: bool = False
    winter: bool = False
    stars: bool = False
    sun_glow: float = 0.0
    noise_sigma: float = 2.0


CONDITIONS: dict[str, Condition] = {
    "day": Condition("day", (1.0, 1.0, 1.0), 230.0, 0.35, (70, 125, 205), (185, 210, 235), (250, 250, 250), 0.45),
    "dusk": Condition(
        "dusk", (0.55, 0.42, 0.40), 185.0, 0.45, (45, 55, 110), (245, 150, 90), (235, 140, 130), 0.35,
        windows_lit=0.22, shops_lit=0.6, signs_lit=0.6, lamps_on=True, sun_glow=0.8, noise_sigma=3.0,
    ),
    "night": Condition(
        "night", (0.09, 0.10, 0.15), 0.0, 0.0, (4, 7, 20), (40, 36, 48), (30, 30, 40), 0.2,
        windows_lit=0.35, shops_lit=0.7, signs_lit=0.8, lamps_on=True, stars=True, noise_sigma=4.0,
    ),
    "fog": Condition(
        "fog", (0.85, 0.87, 0.90), 0.0, 0.0, (196, 199, 204), (206, 208, 212), (210, 210, 212), 0.0,
        fog_m=28.0, fog_colour=(198, 201, 206), windows_lit=0.05, shops_lit=0.4,
    ),
    "winter": Condition(
        "winter", (0.90, 0.93, 1.0), 200.0, 0.1, (150, 160, 178), (205, 210, 218), (215, 218, 222), 0.6,
        fog_m=260.0, fog_colour=(205, 210, 218), winter=True, windows_lit=0.05, shops_lit=0.4,
    ),
}


@dataclass(frozen=True)
class Pose:
    """Camera position (local metres, x east, y north) and yaw (radians, counter-clockwise from east)."""

    x: float
    y: float
    yaw: float


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> uint32 (...) with bytes R, G, B, 0 so a gathered uint32 array views back as RGBA bytes."""
    rgba = np.zeros(rgb.shape[:-1] + (4,), dtype=np.uint8)
    rgba[..., :3] = rgb
    return rgba.view(np.uint32)[..., 0]


def _bake_facades(town: Town, cond: Condition) -> np.ndarray:
    sun = np.array([math.cos(math.radians(cond.sun_azimuth_deg)), math.sin(math.radians(cond.sun_azimuth_deg))])
    side_gain = 1.0 + cond.sun_strength * (np.clip(SIDE_NORMALS @ sun, 0.0, None) - 0.45)
    ambient = np.asarray(cond.ambient, np.float32)
    rows, cols = town.atlas_kind.shape
    out = np.empty((rows, cols), dtype=np.uint32)
    step = 4096
    for c0 in range(0, cols, step):
        sl = slice(c0, min(cols, c0 + step))
        base = town.atlas[:, sl].astype(np.float32)
        kind = town.atlas_kind[:, sl]
        light = town.atlas_light[:, sl].astype(np.float32) / 255.0
        rgb = base * ambient * side_gain[town.column_side[sl]][None, :, None].astype(np.float32)
        if cond.winter:
            rgb[kind == LEDGE] = np.float32([232, 236, 242]) * ambient
        lit = (kind == WINDOW) & (light < cond.windows_lit)
        tint = np.where((light < cond.windows_lit * 0.3)[..., None], np.float32([215, 225, 255]), np.float32([255, 205, 130]))
        rgb = np.where(lit[..., None], tint * (0.75 + 0.25 * light / max(cond.windows_lit, 1e-6))[..., None], rgb)
        rgb = np.where(((kind == SHOP_WINDOW) & (light < cond.shops_lit))[..., None], np.float32([255, 236, 190]) * 0.9, rgb)
        rgb = np.where(((kind == SIGN) & (light < cond.signs_lit))[..., None], np.maximum(base, 40.0), rgb)
        if cond.lamps_on:
            rgb = np.where((kind == DOOR)[..., None], np.maximum(rgb, base * 0.35), rgb)
        out[:, sl] = _pack(np.clip(rgb, 0, 255).astype(np.uint8))
    return out.ravel()


def _bake_ground(town: Town, cond: Condition) -> np.ndarray:
    base = town.ground.astype(np.float32)
    kind = town.ground_kind
    ambient = np.asarray(cond.ambient, np.float32)
    if cond.winter:
        snow = 226.0 + (base.mean(axis=2, keepdims=True) - 170.0) * 0.35 + np.float32([0, 2, 8])
        slush = base * 0.55 + np.float32([150, 150, 156]) * 0.45
        base = np.where(((kind == PAVEMENT) | (kind == CURB))[..., None], snow, base)
        base = np.where(((kind == ROAD) | (kind == MARKING))[..., None], slush, base)
    rgb = base * ambient
    if cond.lamps_on and len(town.lamps):
        gppm = town.spec.ground_texels_per_m
        pool = np.zeros(kind.shape, dtype=np.float32)
        radius = 12.0
        r = int(radius * gppm)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1] / gppm
        blob = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2)).astype(np.float32)
        gx0, gy0 = town.ground_origin
        for x, y, _ in town.lamps:
            i, j = int((y - gy0) * gppm), int((x - gx0) * gppm)
            i0, j0 = max(0, i - r), max(0, j - r)
            i1, j1 = min(pool.shape[0], i + r + 1), min(pool.shape[1], j + r + 1)
            pool[i0:i1, j0:j1] += blob[i0 - (i - r) : i1 - (i - r), j0 - (j - r) : j1 - (j - r)]
        rgb += base * np.minimum(pool, 1.3)[..., None] * np.float32([1.0, 0.85, 0.6]) * 0.85
    return _pack(np.clip(rgb, 0, 255).astype(np.uint8)).ravel()


def _sky(cam: Camera, cond: Condition, rng: np.random.Generator, n_az: int) -> np.ndarray:
    rows = int(math.ceil(cam.cy))
    elev = np.arctan((cam.cy - (np.arange(rows) + 0.5)) / cam.fx)
    t = np.clip(elev / 0.9, 0, 1) ** 0.6
    top, hor = np.float32(cond.sky_top), np.float32(cond.sky_horizon)
    sky = (hor[None, :] * (1 - t[:, None]) + top[None, :] * t[:, None])[:, None, :] * np.ones((1, n_az, 1), np.float32)
    az = np.arange(n_az) / n_az * 2 * np.pi
    if cond.cloud_amount > 0:
        grid = rng.normal(0, 1, size=(6, 48)).astype(np.float32)
        noise = cv2.resize(np.tile(grid, (1, 3)), (3 * n_az, rows), interpolation=cv2.INTER_CUBIC)[:, n_az : 2 * n_az]
        fine = cv2.resize(rng.normal(0, 1, size=(12, 160)).astype(np.float32), (n_az, rows), interpolation=cv2.INTER_CUBIC)
        cover = np.clip((noise + 0.35 * fine - 0.3) * 1.2, 0, 1) * cond.cloud_amount
        cover *= np.clip(elev / 0.05, 0, 1)[:, None]
        sky = sky * (1 - cover[..., None]) + np.float32(cond.cloud_colour) * cover[..., None]
    if cond.sun_glow > 0:
        sun_az = math.radians(cond.sun_azimuth_deg)
        d = np.angle(np.exp(1j * (az - sun_az)))
        glow = np.exp(-(d[None, :] ** 2) / 0.3 - (elev[:, None] ** 2) / 0.05) * cond.sun_glow
        sky = sky + glow[..., None] * np.float32([255, 180, 90]) * 0.6
    if cond.stars:
        stars = rng.random((rows, n_az)) < 0.002
        sky[stars & (elev[:, None] > 0.08)] = 200.0
    return np.clip(sky, 0, 255).astype(np.uint8)


def _tree_sprite(rng: np.random.Generator, cond: Condition, variant: int) -> np.ndarray:
    h, w = 192, 112
    img = np.zeros((h, w, 4), dtype=np.uint8)
    trunk = (70, 55, 40) if variant % 2 else (95, 80, 65)
    cv2.rectangle(img, (w // 2 - 4, int(h * 0.45)), (w // 2 + 4, h - 1), (*trunk, 255), -1)
    if cond.winter:
        def branch(x, y, ang, length, width, depth):
            x2, y2 = x + length * math.cos(ang), y - length * math.sin(ang)
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), (*trunk, 255), max(1, width), cv2.LINE_AA)
            if depth > 0:
                for da in (-0.45, 0.4):
                    branch(x2, y2, ang + da + rng.normal(0, 0.15), length * 0.72, width - 1, depth - 1)

        branch(w / 2, h * 0.5, math.pi / 2, h * 0.22, 5, 5)
    else:
        greens = np.array([[60, 110, 40], [45, 95, 35], [80, 125, 50], [55, 100, 60]], np.float32)
        g = greens[variant % 4]
        for _ in range(60):
            cx = w / 2 + rng.normal(0, w * 0.17)
            cy = h * 0.32 + rng.normal(0, h * 0.11)
            shade = g * float(rng.uniform(0.7, 1.25))
            cv2.circle(img, (int(cx), int(cy)), int(rng.uniform(8, 18)), (*np.clip(shade, 0, 255).tolist(), 255), -1)
    rgb = img[..., :3].astype(np.float32) * np.float32(cond.ambient)
    img[..., :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    return img


def _lamp_sprite(cond: Condition) -> np.ndarray:
    h, w = 240, 48
    img = np.zeros((h, w, 4), dtype=np.uint8)
    pole = np.clip(np.float32([90, 95, 100]) * np.float32(cond.ambient), 0, 255).astype(int).tolist()
    cv2.rectangle(img, (w // 2 - 2, 12), (w // 2 + 1, h - 1), (*pole, 255), -1)
    cv2.rectangle(img, (w // 2 - 4, h - 30), (w // 2 + 3, h - 1), (*pole, 255), -1)
    cv2.rectangle(img, (w // 2 - 12, 8), (w // 2 + 12, 14), (*pole, 255), -1)
    head = (255, 240, 200) if cond.lamps_on else tuple(pole)
    cv2.rectangle(img, (w // 2 - 12, 14), (w // 2 + 12, 18), (*head, 255), -1)
    return img


class Renderer:
    """Renders frames of one town for one camera and condition; build once, then call render(pose) per frame."""

    n_az = 1024
    tree_size_m = (4.8, 8.0)  # billboard width, height (scaled by the tree's own height)
    lamp_size_m = (1.4, 7.0)

    def __init__(self, town: Town, camera: Camera, condition: Condition, noise_seed: int = 0):
        camera.validate()
        self.town, self.cam, self.cond = town, camera, condition
        rng = np.random.default_rng([town.spec.seed, 77, noise_seed])
        facade = _bake_facades(town, condition)
        ground = _bake_ground(town, condition)
        sky = _pack(_sky(camera, condition, rng, self.n_az)).ravel()
        self.table = np.concatenate([facade, ground, sky])
        self.ground_base = facade.size
        self.sky_base = facade.size + ground.size
        self.atlas_cols = town.atlas_kind.shape[1]
        self.ppm = float(town.spec.texels_per_m)
        self.gppm = float(town.spec.ground_texels_per_m)
        self.gw = town.ground_kind.shape[1]
        w, h = camera.width, camera.height
        self.xc = ((np.arange(w) + 0.5 - camera.cx) / camera.fx).astype(np.float64)
        a = (camera.cy - (np.arange(h) + 0.5)) / camera.fx
        self.top = int(math.ceil(camera.cy))  # rows above the horizon (sky possible)
        self.a_top = (a[: self.top] * self.ppm).astype(np.float32)[:, None]
        self.a_bot = (a[self.top :] * self.ppm).astype(np.float32)[:, None]
        s = camera.height_m / -a[self.top :]  # ground distance of each lower row
        self.s_bot = s
        self.s_bot_g = (s * self.gppm).astype(np.float32)[:, None]
        self.sky_rows = (self.sky_base + np.arange(self.top) * self.n_az).astype(np.int32)[:, None]
        self.trees = [_tree_sprite(np.random.default_rng([town.spec.seed, 90, v]), condition, v) for v in range(4)]
        self.lamp = _lamp_sprite(condition)
        self.noise = None
        if condition.noise_sigma > 0:
            self.noise = [rng.normal(0, condition.noise_sigma, size=(h, w, 3)).astype(np.int16) for _ in range(3)]
        self.fog = np.float32(condition.fog_colour)

    def _cast(self, pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per column: forward depth (m), atlas column, building height (m), ray direction x and y."""
        cos, sin = math.cos(pose.yaw), math.sin(pose.yaw)
        dx = cos + self.xc * sin
        dy = sin - self.xc * cos
        b = self.town.blocks
        with np.errstate(divide="ignore", invalid="ignore"):
            ix = 1.0 / np.where(np.abs(dx) < 1e-12, 1e-12, dx)
            iy = 1.0 / np.where(np.abs(dy) < 1e-12, 1e-12, dy)
            tx0 = (b[None, :, 0] - pose.x) * ix[:, None]
            tx1 = (b[None, :, 2] - pose.x) * ix[:, None]
            ty0 = (b[None, :, 1] - pose.y) * iy[:, None]
            ty1 = (b[None, :, 3] - pose.y) * iy[:, None]
        tminx, tmaxx = np.minimum(tx0, tx1), np.maximum(tx0, tx1)
        tminy, tmaxy = np.minimum(ty0, ty1), np.maximum(ty0, ty1)
        tnear = np.maximum(tminx, tminy)
        tfar = np.minimum(tmaxx, tmaxy)
        t = np.where((tnear <= tfar) & (tnear > 0.05), tnear, np.inf)
        blk = np.argmin(t, axis=1)
        cols = np.arange(len(dx))
        depth = t[cols, blk]
        if not np.all(np.isfinite(depth)):
            raise ValueError(f"camera at ({pose.x:.1f}, {pose.y:.1f}) is inside a block or outside the town")
        x_slab = tminx[cols, blk] >= tminy[cols, blk]
        side = np.where(x_slab, np.where(dx > 0, 3, 1), np.where(dy > 0, 0, 2))
        hx, hy = pose.x + depth * dx, pose.y + depth * dy
        bb = b[blk]
        along = np.choose(side, [hx - bb[:, 0], hy - bb[:, 1], bb[:, 2] - hx, bb[:, 3] - hy])
        length = self.town.side_length[blk, side]
        u = self.town.side_offset[blk, side] + np.clip(along, 0.0, np.maximum(length - 1e-3, 0.0))
        col = np.clip((u * self.ppm).astype(np.int64), 0, self.atlas_cols - 1)
        height = self.town.column_height[col]
        return depth, col, height, dx, dy

    def layout(self, pose: Pose) -> np.ndarray:
        """Per-pixel class (SKY, FACADE, GROUND) of the frame at `pose`: the geometry, independent of the condition."""
        depth, _, height, _, _ = self._cast(pose)
        ch = self.cam.height_m * self.ppm
        zt = self.a_top * depth[None, :].astype(np.float32) + ch
        zb = self.a_bot * depth[None, :].astype(np.float32) + ch
        top = np.where(zt >= (height * self.ppm)[None, :], SKY, FACADE)
        bot = np.where(zb < 0, GROUND, FACADE)
        return np.concatenate([top, bot]).astype(np.uint8)

    def render(self, pose: Pose, frame_index: int = 0) -> np.ndarray:
        """The uint8 HxWx3 RGB frame seen from `pose` (frame_index picks the sensor-noise pattern)."""
        depth, col, height, dx, dy = self._cast(pose)
        ch = np.float32(self.cam.height_m * self.ppm)
        d32 = depth.astype(np.float32)[None, :]
        col32 = col.astype(np.int32)[None, :]
        # upper half: facade or sky
        zt = self.a_top * d32 + ch
        sky_t = zt >= (height * self.ppm).astype(np.float32)[None, :]
        az = (pose.yaw - np.arctan(self.xc)) / (2 * np.pi)
        az_col = ((az - np.floor(az)) * self.n_az).astype(np.int32) % self.n_az
        idx_top = np.where(sky_t, self.sky_rows + az_col[None, :], zt.astype(np.int32) * self.atlas_cols + col32)
        # lower half: facade or ground
        zb = self.a_bot * d32 + ch
        ground_b = zb < 0
        gx0, gy0 = self.town.ground_origin
        gx = (self.s_bot_g * dx.astype(np.float32)[None, :] + np.float32((pose.x - gx0) * self.gppm)).astype(np.int32)
        gy = (self.s_bot_g * dy.astype(np.float32)[None, :] + np.float32((pose.y - gy0) * self.gppm)).astype(np.int32)
        gidx = gy * self.gw + gx + self.ground_base
        idx_bot = np.where(ground_b, gidx, np.maximum(zb, 0).astype(np.int32) * self.atlas_cols + col32)
        packed = np.concatenate([self.table[idx_top], self.table[idx_bot]])
        img = packed.view(np.uint8).reshape(self.cam.height, self.cam.width, 4)[..., :3]
        if self.cond.fog_m > 0:
            img = self._fog(img, depth, sky_t, ground_b)
        else:
            img = np.ascontiguousarray(img)
        self._billboards(img, pose, depth)
        if self.noise is not None:
            noisy = img.astype(np.int16)
            noisy += self.noise[frame_index % len(self.noise)]
            img = np.clip(noisy, 0, 255).astype(np.uint8)
        return img

    def _fog(self, img: np.ndarray, depth: np.ndarray, sky_t: np.ndarray, ground_b: np.ndarray) -> np.ndarray:
        keep_col = np.exp(-depth / self.cond.fog_m) * 256.0
        keep_row = np.exp(-self.s_bot / self.cond.fog_m) * 256.0
        w_top = np.where(sky_t, 0.0, keep_col[None, :])
        w_bot = np.where(ground_b, keep_row[:, None], keep_col[None, :])
        w = np.concatenate([w_top, w_bot]).astype(np.uint16)[..., None]
        out = img.astype(np.uint16) * w
        out += (self.fog.astype(np.uint16)[None, None, :] * (256 - w))
        return (out >> 8).astype(np.uint8)

    def _billboards(self, img: np.ndarray, pose: Pose, wall_depth: np.ndarray) -> None:
        town, cam = self.town, self.cam
        cos, sin = math.cos(pose.yaw), math.sin(pose.yaw)
        objs = []
        for pts, kind in ((town.trees, 0), (town.lamps, 1)):
            if not len(pts):
                continue
            rx, ry = pts[:, 0] - pose.x, pts[:, 1] - pose.y
            fwd = rx * cos + ry * sin
            lat = rx * sin - ry * cos
            ok = (fwd > 1.0) & (fwd < 150.0) & (np.abs(lat) < fwd * (abs(self.xc[0]) + 0.5) + 4.0)
            for i in np.flatnonzero(ok):
                objs.append((fwd[i], lat[i], kind, i))
        objs.sort(key=lambda o: -o[0])
        for fwd, lat, kind, i in objs:
            if kind == 0:
                variant, tree_h = int(town.trees[i, 2]), town.trees[i, 3]
                sprite = self.trees[variant]
                w_m, h_m = self.tree_size_m[0] * tree_h / 8.0, tree_h
            else:
                sprite = self.lamp
                w_m, h_m = self.lamp_size_m
            f = cam.fx / fwd
            c_lo, c_hi = cam.cx + (lat - w_m / 2) * f, cam.cx + (lat + w_m / 2) * f
            r_lo, r_hi = cam.cy - (h_m - cam.height_m) * f, cam.cy + cam.height_m * f
            c0, c1 = max(0, int(math.ceil(c_lo - 0.5))), min(cam.width, int(math.ceil(c_hi - 0.5)))
            r0, r1 = max(0, int(math.ceil(r_lo - 0.5))), min(cam.height, int(math.ceil(r_hi - 0.5)))
            if c1 <= c0 or r1 <= r0:
                continue
            cols = np.arange(c0, c1)
            visible = wall_depth[cols] > fwd
            if not visible.any():
                continue
            sh, sw = sprite.shape[:2]
            src_c = np.clip(((cols + 0.5 - c_lo) / (c_hi - c_lo) * sw).astype(np.int64), 0, sw - 1)
            src_r = np.clip(((np.arange(r0, r1) + 0.5 - r_lo) / (r_hi - r_lo) * sh).astype(np.int64), 0, sh - 1)
            patch = sprite[src_r[:, None], src_c[None, :]]
            mask = (patch[..., 3] > 127) & visible[None, :]
            rgb = patch[..., :3]
            if self.cond.fog_m > 0:
                k = math.exp(-fwd / self.cond.fog_m)
                rgb = (rgb * k + self.fog * (1 - k)).astype(np.uint8)
            np.copyto(img[r0:r1, c0:c1], rgb, where=mask[..., None])


def benchmark(renderer: Renderer, poses: list[Pose], jpeg_quality: int | None = None) -> float:
    """Frames per second of rendering `poses` (plus JPEG encoding when jpeg_quality is given)."""
    if not poses:
        raise ValueError("benchmark needs at least one pose")
    renderer.render(poses[0])
    start = time.perf_counter()
    for i, pose in enumerate(poses):
        img = renderer.render(pose, i)
        if jpeg_quality is not None:
            cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    return len(poses) / (time.perf_counter() - start)
