"""The text-to-video model that diffusion training optimises (chapter 06): the text
encoder and the DiT, trained jointly, with the encoder's `<cls>` output as the pooled text
the DiT's adaLN reads and its token embeddings as what cross-attention reads.

    ids, mask [B, L] --TextEncoder--> tokens [B, L, Dt], pooled [B, Dt]
    noisy latent [B, t, h, w, c], time [B] --DiT(tokens, mask, pooled)--> prediction

Also here: weight surgery (`copy_weights`: a model grows into a frame-conditioned one),
loading an exported model (`load_text_to_video_model`), and the checks that two experts
can share one sampling path (`check_experts`). Exporting is `sora_mini.export`'s job.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

from sora_mini import store
from sora_mini.diffusion import DiffusionConfig
from sora_mini.dit import DiT, DiTConfig
from sora_mini.text import TextConfig, TextEncoder

LOAD_HINT = "train one with `python -m sora_mini train-dit` and export it"


class TextToVideoModel(nnx.Module):
    def __init__(self, text_config: TextConfig, dit_config: DiTConfig, *, rngs: nnx.Rngs):
        if dit_config.text_dim != text_config.dim:
            raise ValueError(f"the DiT reads text of width {dit_config.text_dim}, but the text encoder makes "
                             f"width {text_config.dim}")
        self.text = TextEncoder(text_config, rngs=rngs)
        self.dit = DiT(dit_config, rngs=rngs)

    def __call__(self, x, time, ids, mask, *, known=None, known_mask=None):
        """Noisy latents `[B, t, h, w, c]`, times `[B]`, token ids and mask `[B, L]`; known
        latent frames and their mask `[B, t]` for a frame-conditioned DiT."""
        return self.denoise(x, time, self.text(ids, mask), mask, known=known, known_mask=known_mask)

    def denoise(self, x, time, encoded, mask, *, known=None, known_mask=None):
        """The DiT on an already encoded caption, `encoded = self.text(ids, mask)`: training
        encodes once and also reads `pooled` for the caption-attribute loss."""
        tokens, pooled = encoded
        return self.dit(x, time, text=tokens, text_mask=mask, text_pooled=pooled, known=known, known_mask=known_mask)


# ----------------------------------------------------------------------------------------
# Weight surgery.


def copy_weights(source: TextToVideoModel, target: TextToVideoModel) -> None:
    """`target` takes `source`'s weights. The configs must agree except that `target` may
    add `frame_conditioning`, `absolute_pos`, an `output_conv` or a text `attribute_head`
    (for the caption-attribute loss; it keeps its fresh init), and starts as exactly the
    same function: a text-to-video model grows into a frame-conditioned one by widening the
    patch embedding with zero rows for the new input channels (known frames, mask), as
    InstructPix2Pix widens Stable Diffusion; the absolute-position projection and the
    output convolution's kernel start at zero."""
    old, new = source.dit.config, target.dit.config
    grown = old.replace(frame_conditioning=new.frame_conditioning, absolute_pos=new.absolute_pos,
                        output_conv=old.output_conv or new.output_conv)
    text_old, text_new = source.text.config, target.text.config
    if text_old.attribute_classes == 0:
        text_old = text_old.replace(attribute_classes=text_new.attribute_classes)
    if old.frame_conditioning and not new.frame_conditioning:
        raise ValueError("the source model reads known frames; the target must be frame-conditioned too")
    if old.absolute_pos and not new.absolute_pos:
        raise ValueError("the source model has absolute positions; the target must have them too")
    if text_old != text_new or grown != new:
        raise ValueError(f"cannot copy weights between different models (only frame_conditioning, absolute_pos, "
                         f"output_conv and an attribute head may be added): {source.text.config}, {old} -> "
                         f"{text_new}, {new}")
    params = nnx.state(source, nnx.Param)
    if old.input_channels != new.input_channels:  # rows are ordered (position in the patch, channel)
        kernel = params["dit"]["patch_embed"]["kernel"][...]  # [P * c_in, D]
        P = kernel.shape[0] // old.input_channels
        kernel = jnp.pad(kernel.reshape(P, old.input_channels, -1),
                         ((0, 0), (0, new.input_channels - old.input_channels), (0, 0)))
        params["dit"]["patch_embed"]["kernel"] = nnx.Param(kernel.reshape(P * new.input_channels, -1))
    nnx.update(target, params)


def init_from_pretrained(model: TextToVideoModel, path: str) -> dict:
    """Copy the pretrained model in `path` (`dit/`; a directory or a shipped name such as
    `"tiny"`) into `model` (`copy_weights`), to fine-tune it. Returns its manifest."""
    path = store.resolve_pretrained(path, what="text-to-video model", hint=LOAD_HINT)
    copy_weights(load_text_to_video_model(os.path.join(path, "dit"))[0], model)
    return store.read_json(os.path.join(path, "dit", "manifest.json"))


# ----------------------------------------------------------------------------------------
# Loading. An exported model directory (`dit/` or `low_noise/`) holds config.json with
# the text, DiT and diffusion configs, the latent scale and the weights' dtype.


def read_settings(directory: str) -> dict:
    """The config.json of an exported text-to-video model's `directory` (`dit/`, `low_noise/`)."""
    if not os.path.exists(os.path.join(directory, "config.json")):
        raise FileNotFoundError(f"no pretrained text-to-video model at {os.path.dirname(directory)} (expected "
                                f"{os.path.basename(directory)}/config.json and vae/): {LOAD_HINT}")
    return store.read_json(os.path.join(directory, "config.json"))


def configs_from_settings(settings: dict) -> tuple[TextConfig, DiTConfig, DiffusionConfig]:
    """The text, DiT and diffusion configs of a run's or an export's settings."""
    return (store.config_from_dict(TextConfig, settings["text"]), store.config_from_dict(DiTConfig, settings["dit"]),
            store.config_from_dict(DiffusionConfig, settings["diffusion"]))


def abstract_text_to_video_model(settings: dict) -> TextToVideoModel:
    text, dit, _ = configs_from_settings(settings)
    return store.abstract_model(lambda: TextToVideoModel(text, dit, rngs=nnx.Rngs(0)))


def load_text_to_video_model(directory: str) -> tuple[TextToVideoModel, dict]:
    """The text encoder and DiT exported to `directory` (`dit/` or `low_noise/`, or a shipped
    name: `"tiny"` is `tiny/dit`), in float32, and their settings."""
    if store.is_pretrained_name(directory):
        directory = store.resolve_pretrained(directory, "dit")
    settings = read_settings(directory)
    model = store.restore_params(abstract_text_to_video_model(settings), directory, what="DiT weights",
                                 stored_dtype=jnp.dtype(settings.get("weights_dtype", "float32")))
    return model, settings


# ----------------------------------------------------------------------------------------
# Two experts on one sampling path (eDiff-I, Wan 2.2).


def check_switch(low_noise_below) -> float:
    """The experts' switching time as a float in [0, 1], or a `ValueError`."""
    below = float(low_noise_below)
    if not 0.0 <= below <= 1.0:
        raise ValueError(f"low_noise_below is a time in [0, 1] (0: the main model throughout), got {low_noise_below!r}")
    return below


def check_experts(main: dict, low: dict, low_noise_below: float, latent_scale: float) -> None:
    """Two experts denoise one sampling path: the same latents (VAE, scale), the same
    prediction on the same time axis, the same tokens; and the low-noise expert trained on
    the times it takes over (its `max_time`)."""
    check_switch(low_noise_below)
    same = {"latent_scale": (main["latent_scale"], latent_scale),
            "latent channels": (main["dit"]["in_channels"], low["dit"]["in_channels"]),
            "vocabulary": ((main["text"]["vocab_size"], main["text"]["max_length"]),
                           (low["text"]["vocab_size"], low["text"]["max_length"]))}
    for key in ("objective", "prediction", "schedule"):
        same[f"diffusion {key}"] = (main["diffusion"][key], low["diffusion"][key])
    differ = [f"{k}: {a!r} against {b!r}" for k, (a, b) in same.items() if a != b]
    if differ:
        raise ValueError(f"the low-noise expert does not fit the main model ({'; '.join(differ)})")
    max_time = low["diffusion"].get("max_time", 1.0)
    if low_noise_below > max_time:
        raise ValueError(f"the low-noise expert trained only on times t < {max_time:g}; it cannot take over at "
                         f"low_noise_below = {low_noise_below:g}")
