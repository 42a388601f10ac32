"""Spacetime patches and where they are (chapter 03).

Sora's report: "we turn videos into patches by first compressing videos into a
lower-dimensional latent space, and subsequently decomposing the representation into
spacetime patches". A latent video `[B, t, h, w, c]` is cut into non-overlapping
`pt x ph x pw` boxes; each box, flattened, is one token:

    latent [B, t, h, w, c] --patchify--> tokens [B, N, pt*ph*pw*c],   N = t/pt * h/ph * w/pw

Tokens are ordered time-major (frame by frame, each frame row by row), and
`patch_coordinates` gives every token's integer `(t, y, x)` position on the token grid.
The transformer itself is order-agnostic: position reaches it only through a positional
encoding, two of which live here:

- fixed 3D sin-cos embeddings added to the tokens (the DiT paper, in 3D), and
- 3D rotary embeddings (RoPE) that rotate queries and keys inside attention, so that
  attention scores depend only on *differences* of coordinates. Nothing in the model then
  depends on the grid's size: one model serves any duration, resolution and aspect ratio.

`pack` puts clips with different grids into one sequence (NaViT's "Patch n' Pack") with
segment ids, and `segment_mask` keeps each clip's tokens attending only to each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def _check_patch_size(patch_size) -> tuple[int, int, int]:
    if len(patch_size) != 3 or any(int(p) != p or p < 1 for p in patch_size):
        raise ValueError(f"patch_size must be three positive integers (pt, ph, pw), got {patch_size}")
    return tuple(int(p) for p in patch_size)


def patch_grid(latent_shape: Sequence[int], patch_size) -> tuple[int, int, int]:
    """`(gt, gh, gw)`: how many patches fit along t, h, w of a `(t, h, w, ...)` latent.
    Raises a `ValueError` naming the axis that the patch size does not divide."""
    pt, ph, pw = _check_patch_size(patch_size)
    grid = []
    for name, size, p in zip("thw", latent_shape[:3], (pt, ph, pw), strict=True):
        if size % p:
            raise ValueError(f"latent {name}={size} is not divisible by the patch size {p} along {name} "
                             f"(latent t, h, w = {tuple(latent_shape[:3])}, patch_size = {(pt, ph, pw)})")
        grid.append(size // p)
    return tuple(grid)


def patchify(x, patch_size):
    """`[B, t, h, w, c]` -> `[B, N, pt*ph*pw*c]`, tokens in (t, y, x) raster order.
    Within a token the values are ordered (dt, dy, dx, c)."""
    if x.ndim != 5:
        raise ValueError(f"patchify expects a latent [B, t, h, w, c], got shape {x.shape}")
    pt, ph, pw = _check_patch_size(patch_size)
    gt, gh, gw = patch_grid(x.shape[1:4], patch_size)
    B, c = x.shape[0], x.shape[-1]
    x = x.reshape(B, gt, pt, gh, ph, gw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, gt, gh, gw, pt, ph, pw, c]
    return x.reshape(B, gt * gh * gw, pt * ph * pw * c)


def unpatchify(tokens, patch_size, grid):
    """Exact inverse of `patchify`: `[B, N, pt*ph*pw*c]` with `N = gt*gh*gw` -> `[B, t, h, w, c]`."""
    pt, ph, pw = _check_patch_size(patch_size)
    gt, gh, gw = (int(g) for g in grid)
    if tokens.ndim != 3 or tokens.shape[1] != gt * gh * gw or tokens.shape[2] % (pt * ph * pw):
        raise ValueError(f"unpatchify expects tokens [B, {gt * gh * gw}, pt*ph*pw*c] for grid {tuple(grid)} and "
                         f"patch_size {(pt, ph, pw)}, got shape {tokens.shape}")
    B, c = tokens.shape[0], tokens.shape[2] // (pt * ph * pw)
    x = tokens.reshape(B, gt, gh, gw, pt, ph, pw, c)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # [B, gt, pt, gh, ph, gw, pw, c]
    return x.reshape(B, gt * pt, gh * ph, gw * pw, c)


def patch_coordinates(grid) -> np.ndarray:
    """`int32 [N, 3]`: the `(t, y, x)` grid position of each token, in `patchify`'s order."""
    gt, gh, gw = (int(g) for g in grid)
    t, y, x = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([t.ravel(), y.ravel(), x.ravel()], axis=-1).astype(np.int32)


def axis_dims(dim: int) -> tuple[int, int, int]:
    """Split `dim` features over the (t, y, x) axes, each part even (sin-cos and RoPE
    both work on pairs). Height and width get equal shares, time takes the rest: e.g.
    384 -> (128, 128, 128), 1024 -> (344, 340, 340), 64 -> (24, 20, 20)."""
    if dim % 2 or dim < 6:
        raise ValueError(f"a 3D positional encoding needs an even dimension of at least 6, got {dim}")
    spatial = 2 * (dim // 6)
    return dim - 2 * spatial, spatial, spatial


def _frequencies(dim: int, theta: float) -> np.ndarray:
    # dim/2 frequencies from 1 down to 1/theta, geometrically spaced (Transformer, DiT, RoPE).
    return 1.0 / theta ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))


def sincos_embedding(coords, dim: int, theta: float = 10_000.0) -> np.ndarray:
    """Fixed 3D sin-cos positional embedding `float32 [N, dim]` of integer coordinates
    `[N, 3]`: for each axis, `[sin(pos * w_i), cos(pos * w_i)]` over its share of `dim`
    (`axis_dims`), concatenated t | y | x. With one frame it is the DiT paper's 2D table
    plus a constant time part."""
    coords = np.asarray(coords, np.float64)
    parts = []
    for axis, d in enumerate(axis_dims(dim)):
        angles = coords[:, axis:axis + 1] * _frequencies(d, theta)[None]  # [N, d/2]
        parts += [np.sin(angles), np.cos(angles)]  # t-sin, t-cos, y-sin, y-cos, x-sin, x-cos
    return np.concatenate(parts, axis=-1).astype(np.float32)


def rope_angles(coords, head_dim: int, theta: float = 10_000.0):
    """Rotation angles `[..., N, head_dim / 2]` for 3D RoPE from coordinates `[..., N, 3]`.

    The head's feature pairs are shared out over (t, y, x) by `axis_dims`: pair i of the
    time share turns by `t * w_i`, and so on. Rotating q at position m and k at position n
    by these angles makes `q . k` a function of `m - n` only (per axis), which is what
    lets one model run on grids of any size."""
    coords = jnp.asarray(coords, jnp.float32)
    angles = [coords[..., axis:axis + 1] * jnp.asarray(_frequencies(d, theta), jnp.float32)
              for axis, d in enumerate(axis_dims(head_dim))]
    return jnp.concatenate(angles, axis=-1)


def apply_rope(x, angles):
    """Rotate feature pairs `(x[2i], x[2i+1])` of queries or keys `[B, N, heads, head_dim]`
    by `angles` `[N, head_dim/2]` (or `[B, N, head_dim/2]`). Computed in float32."""
    if angles.ndim == 2:
        angles = angles[None]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]  # [B, N, 1, head_dim/2]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


# ----------------------------------------------------------------------------------------
# Patch n' Pack: clips of different grids in one sequence.


def pack(latents: Sequence, patch_size, length: int | None = None):
    """Patchify latents of different `(t, h, w)` (each `[t, h, w, c]`, same `c`) and
    concatenate their tokens into one sequence, padded to `length`.

    Returns `tokens [length, D]`, `coords int32 [length, 3]`, `segment_ids int32 [length]`
    (0, 1, 2, ... per clip, -1 for padding) and the list of grids, to `unpack` with."""
    tokens, coords, segments, grids = [], [], [], []
    for i, z in enumerate(latents):
        if z.ndim != 4:
            raise ValueError(f"pack expects latents [t, h, w, c], got shape {z.shape} for item {i}")
        grid = patch_grid(z.shape, patch_size)
        tokens.append(patchify(jnp.asarray(z)[None], patch_size)[0])
        coords.append(patch_coordinates(grid))
        segments.append(np.full(len(coords[-1]), i, np.int32))
        grids.append(grid)
    n = sum(len(c) for c in coords)
    length = n if length is None else length
    if n > length:
        raise ValueError(f"the clips make {n} tokens, more than the packed length {length}")
    pad = length - n
    tokens = jnp.concatenate(tokens + [jnp.zeros((pad, tokens[0].shape[-1]), tokens[0].dtype)])
    coords = np.concatenate(coords + [np.zeros((pad, 3), np.int32)])
    segments = np.concatenate(segments + [np.full(pad, -1, np.int32)])
    return tokens, coords, segments, grids


def unpack(tokens, patch_size, grids) -> list:
    """The latents `[t, h, w, c]` of a packed sequence, in order (padding dropped)."""
    out, start = [], 0
    for grid in grids:
        n = int(np.prod(grid))
        out.append(unpatchify(tokens[None, start:start + n], patch_size, grid)[0])
        start += n
    return out


def segment_mask(segment_ids):
    """`bool [..., N, N]` attention mask: token i may attend to token j only within the
    same clip. Padding tokens (-1) attend only to padding, so no softmax row is empty."""
    s = jnp.asarray(segment_ids)
    return s[..., :, None] == s[..., None, :]
