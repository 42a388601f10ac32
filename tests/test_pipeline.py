import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sora_mini import data, store, train
from sora_mini.diffusion import DiffusionConfig
from sora_mini.dit import DiTConfig
from sora_mini.export import export_text_to_video, export_vae
from sora_mini.model import TextToVideoModel
from sora_mini.pipeline import TextToVideo
from sora_mini.presets import DEMO_PROMPTS
from sora_mini.text import TextConfig
from sora_mini.vae import VAEConfig, VideoVAE

VAE = VAEConfig(latent_channels=4, channels=(8, 16), temporal_down=2, groups=4)  # 5x16x16 -> 3x8x8x4
TEXT = TextConfig(dim=16, depth=1, num_heads=2)
DIT = DiTConfig(in_channels=4, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, text_dim=16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    world = data.ShapesWorldConfig(height=16, width=16, num_frames=5)
    export_vae(VideoVAE(VAE, rngs=nnx.Rngs(0)), str(root / "vae"), world=world, eval_clips=2)
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(8, 3, 8, 8, 4)).astype(np.float32)
    cache = {"mean": mean, "logvar": np.full_like(mean, -8.0),
             "caption": np.asarray([data.make_clip(world, s).caption for s in range(8)])}
    tc = train.DiTTrainConfig(steps=3, batch_size=4, warmup_steps=1, save_every=3, log_every=1, latent_scale=0.9)
    settings = {"text": TEXT.__dict__ | {}, "dit": {**DIT.__dict__, "patch_size": list(DIT.patch_size)}}
    _, ema = train.train_dit(TextToVideoModel(TEXT, DIT, rngs=nnx.Rngs(0)), cache, tc, str(root / "run"),
                             progress=False, settings=settings)
    manifest = export_text_to_video(str(root / "run"), str(root / "model"), str(root / "vae"), extra={"command": "t"})
    return root, ema, manifest


def test_export_ships_the_ema_weights_and_a_manifest(exported):
    root, ema, manifest = exported
    assert manifest["steps"] == 3 and manifest["command"] == "t" and manifest["train"]["latent_scale"] == 0.9
    assert sorted(os.listdir(root / "model")) == ["dit", "vae"]
    pipe = TextToVideo.from_pretrained(root / "model")
    for x, y in zip(jax.tree.leaves(ema), jax.tree.leaves(nnx.state(pipe.model, nnx.Param)), strict=True):
        assert y.dtype == np.float32  # shipped as float16, computed in float32
        np.testing.assert_array_equal(np.asarray(x).astype(np.float16).astype(np.float32), y)
    assert pipe.latent_scale == 0.9


def test_a_prompt_becomes_a_seeded_uint8_video(exported):
    pipe = TextToVideo.from_pretrained(exported[0] / "model")
    kw = dict(num_frames=5, height=16, width=16, steps=3)
    a = pipe("a red circle moves to the right", seed=1, **kw)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, pipe("a red circle moves to the right", seed=1, **kw))
    assert not np.array_equal(a, pipe("a red circle moves to the right", seed=2, **kw))
    compiled = len(pipe._compiled)
    pipe("a red circle moves to the right", seed=1, guidance=7.0, **kw)
    assert len(pipe._compiled) == compiled  # the guidance scale is an input, not a recompile
    b = pipe("two blue squares fall", seed=1, guidance=None, sampler="heun", **kw)
    assert b.shape == (5, 16, 16, 3)
    longer = pipe("a red circle moves to the right", seed=1, num_frames=9, height=16, width=32, steps=3)
    assert longer.shape == (9, 16, 32, 3)  # any size the VAE and patches divide


def test_bad_requests_get_clear_errors(exported, tmp_path):
    pipe = TextToVideo.from_pretrained(exported[0] / "model")
    with pytest.raises(ValueError, match="the prompt is empty"):
        pipe("   ")
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        pipe("a red circle", sampler="rk4")
    with pytest.raises(ValueError, match=r"T = 1 \+ k \* 2"):
        pipe("a red circle", num_frames=6, height=16, width=16)
    with pytest.raises(ValueError, match="divisible"):
        pipe("a red circle", num_frames=5, height=18, width=16)
    with pytest.raises(FileNotFoundError, match="no pretrained text-to-video model"):
        TextToVideo.from_pretrained(tmp_path)
    shutil.copytree(exported[0] / "model", tmp_path / "broken")
    shutil.rmtree(tmp_path / "broken" / "dit" / "params")
    with pytest.raises(ValueError, match="the DiT weights in .*broken/dit/params are missing or corrupt"):
        TextToVideo.from_pretrained(tmp_path / "broken")


def test_a_low_noise_expert_takes_over_at_and_below_its_time(exported, tmp_path):
    # A second model, of another architecture, exported as the first one's low-noise expert
    # (Wan 2.2, eDiff-I): the main model denoises while t > low_noise_below, the expert after.
    root = exported[0]
    shutil.copytree(root / "model", tmp_path / "model")
    cache = {"mean": np.random.default_rng(5).normal(size=(8, 3, 8, 8, 4)).astype(np.float32)}
    cache |= {"logvar": np.full_like(cache["mean"], -8.0), "caption": np.asarray(["a red circle moves left"] * 8)}
    low_dit = DIT.replace(output_conv=4)
    tc = train.DiTTrainConfig(steps=3, batch_size=4, warmup_steps=1, save_every=3, log_every=1, latent_scale=0.9,
                              learning_rate=3e-2)
    settings = {"text": TEXT.__dict__ | {}, "dit": {**low_dit.__dict__, "patch_size": list(low_dit.patch_size)}}
    # Trained on its own band only (Wan 2.2): times t < 0.5.
    train.train_dit(TextToVideoModel(TEXT, low_dit, rngs=nnx.Rngs(1)), cache, tc, str(tmp_path / "run"),
                    DiffusionConfig(max_time=0.5), progress=False, settings=settings)
    with pytest.raises(ValueError, match="trained only on times t < 0.5, so it cannot start sampling from noise"):
        export_text_to_video(str(tmp_path / "run"), str(tmp_path / "model"), str(root / "vae"))
    with pytest.raises(ValueError, match="trained only on times t < 0.5; it cannot take over at low_noise_below = 0.6"):
        export_text_to_video(str(tmp_path / "run"), str(tmp_path / "model"), str(root / "vae"), low_noise_below=0.6)
    assert sorted(os.listdir(tmp_path / "model")) == ["dit", "vae"]  # refused: nothing written
    export_text_to_video(str(tmp_path / "run"), str(tmp_path / "model"), str(root / "vae"), low_noise_below=0.5)
    assert sorted(os.listdir(tmp_path / "model")) == ["dit", "low_noise", "vae"]
    pipe = TextToVideo.from_pretrained(tmp_path / "model")
    assert pipe.low_noise_below == 0.5 and pipe.low_noise_model.dit.config.output_conv == 4
    main = TextToVideo.from_pretrained(root / "model")
    low = TextToVideo(pipe.vae, pipe.low_noise_model, pipe.diffusion, pipe.latent_scale)
    prompt, kw = "a red circle moves to the right", dict(num_frames=5, height=16, width=16, steps=4, seed=3)
    np.testing.assert_array_equal(pipe(prompt, low_noise_below=0.0, **kw), main(prompt, **kw))
    only_low = pipe(prompt, low_noise_below=1.0, **kw)
    assert np.abs(only_low.astype(int) - low(prompt, **kw)).max() <= 1  # another program, the same sums
    # Four Euler steps at shift 3 evaluate the model at t = 1, 0.9, 0.75 and 0.5.
    both = pipe(prompt, **kw)
    np.testing.assert_array_equal(both, pipe(prompt, low_noise_below=0.6, **kw))  # no step in (0.5, 0.6]
    assert not np.array_equal(both, pipe(prompt, low_noise_below=0.8, **kw))  # 0.75 changes hands
    for other in (main(prompt, **kw), only_low):
        assert not np.array_equal(both, other)
    compiled = len(pipe._compiled)
    pipe(prompt, low_noise_below=0.3, **kw)
    assert len(pipe._compiled) == compiled  # the switching time is an input, not a recompile
    with pytest.raises(ValueError, match=r"low_noise_below is a time in \[0, 1\]"):
        pipe(prompt, low_noise_below=1.5, **kw)
    with pytest.raises(ValueError, match="needs a low-noise expert"):
        main(prompt, low_noise_below=0.5, **kw)
    with pytest.raises(FileNotFoundError, match="no pretrained text-to-video model"):
        export_text_to_video(str(tmp_path / "run"), str(tmp_path / "nothing"), str(root / "vae"), low_noise_below=0.5)
    config = json.loads((tmp_path / "model" / "dit" / "config.json").read_text())
    (tmp_path / "model" / "dit" / "config.json").write_text(json.dumps(config | {"latent_scale": 0.5}))
    with pytest.raises(ValueError, match="does not fit the main model .latent_scale: 0.5 against 0.9"):
        export_text_to_video(str(tmp_path / "run"), str(tmp_path / "model"), str(root / "vae"), low_noise_below=0.5)
    assert json.loads((tmp_path / "model" / "low_noise" / "config.json").read_text())["low_noise_below"] == 0.5
    with pytest.raises(ValueError, match="does not fit the main model"):  # the refused export changed nothing
        TextToVideo.from_pretrained(tmp_path / "model")


def test_generate_command_writes_an_mp4(exported, tmp_path):
    out = tmp_path / "v.mp4"
    res = subprocess.run([sys.executable, "-m", "sora_mini", "generate", "a red circle moves to the right",
                          "--model", str(exported[0] / "model"), "--out", str(out), "--frames", "5", "--size", "16",
                          "--steps", "2", "--gif"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.stat().st_size > 0 and (tmp_path / "v.gif").exists()
    missing = subprocess.run([sys.executable, "-m", "sora_mini", "generate", "x", "--model", str(tmp_path / "no")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no pretrained text-to-video model" in missing.stderr


def test_train_dit_command_names_what_is_missing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-dit", "--latents", str(tmp_path / "none.npz"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode == 2 and "no latent cache" in res.stderr and "encode-latents" in res.stderr
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-dit", "--vae", str(tmp_path), "--latents", "x.npz",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode == 2 and "no exported VAE manifest" in res.stderr
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-dit", "--latents", "x.npz", "--max-time", "1.5",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode == 2 and "max_time is the time below which training times are drawn" in res.stderr
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-dit", "--latents", "x.npz", "--export", "x",
                          "--coordinator", "localhost:1234", "--num-processes", "2", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--export needs one process" in res.stderr
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-dit", "--latents", "x.npz", "--mesh", "data=3",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert res.returncode == 2 and "needs 3 devices; there are 1" in res.stderr
    assert not (tmp_path / "run").exists()


def test_train_dit_command_trains_and_exports(tmp_path):
    world = data.ShapesWorldConfig(height=16, width=16, num_frames=5)
    eight = VAEConfig(latent_channels=8, channels=(8, 16), temporal_down=2, groups=4)  # the tiny DiT reads 8 channels
    export_vae(VideoVAE(eight, rngs=nnx.Rngs(0)), str(tmp_path / "vae"), world=world, eval_clips=2)
    mean = np.random.default_rng(1).normal(size=(4, 3, 8, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "lat.npz", mean=mean, logvar=np.full_like(mean, -8.0),
             caption=np.asarray(["a red circle falls"] * 4))
    command = [sys.executable, "-m", "sora_mini", "train-dit", "--latents", str(tmp_path / "lat.npz"),
               "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--export", str(tmp_path / "model"),
               "--output-conv", "4"]
    res = subprocess.run(command + ["--vae", str(tmp_path / "vae")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((tmp_path / "model" / "dit" / "manifest.json").read_text())
    assert manifest["steps"] == 2 and "train-dit" in manifest["command"]
    assert json.loads((tmp_path / "model" / "dit" / "config.json").read_text())["dit"]["output_conv"] == 4
    assert (tmp_path / "model" / "vae" / "config.json").exists()
    assert TextToVideo.from_pretrained(tmp_path / "model")("a red circle falls", num_frames=5, height=16, width=16,
                                                            steps=2).shape == (5, 16, 16, 3)
    # The finished run again (it resumes at its last step) exported as the model's low-noise expert.
    res = subprocess.run(command + ["--vae", str(tmp_path / "vae"), "--low-noise-below", "0.4"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "low-noise expert (t <= 0.4)" in res.stdout, res.stderr[-3000:]
    assert TextToVideo.from_pretrained(tmp_path / "model").low_noise_below == 0.4
    export_vae(VideoVAE(VAE, rngs=nnx.Rngs(0)), str(tmp_path / "vae4"), world=world, eval_clips=2)
    res = subprocess.run(command + ["--vae", str(tmp_path / "vae4"), "--out", str(tmp_path / "run4")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "4 latent channels" in res.stderr


# ----------------------------------------------------------------------------------------
# The shipped model and the commands built on it.

SHIPPED = store.resolve_pretrained("tiny")  # shipped in the package: sora_mini/pretrained/tiny


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sora_mini", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("expert", ["dit", "low_noise"])
def test_shipped_model_was_trained_by_the_documented_commands(expert):
    manifest = json.loads(open(os.path.join(SHIPPED, expert, "manifest.json")).read())
    assert manifest["command"].startswith("python -m sora_mini train-dit --preset tiny")
    assert ("--low-noise-below" in manifest["command"]) == (expert == "low_noise")
    assert manifest["steps"] == manifest["train"]["steps"] and manifest["wall_time_s"] > 0
    log = store.read_log(os.path.join(SHIPPED, expert))
    assert log[-1]["step"] == manifest["steps"]
    first, wall_time = manifest, manifest["wall_time_s"]
    while "init" in first:  # a fine-tune: the stage it started from is recorded, back to a from-scratch run
        assert "--init" in first["command"]
        first = first["init"]
        assert first["command"].startswith("python -m sora_mini train-dit --preset tiny")
        wall_time += first["wall_time_s"]
    assert first["final_train_loss"] < 0.25  # from E[(eps - x0)^2] = 2 at initialisation
    assert wall_time < 3600  # the budget: trained within an hour on the course's 2-core CPU (the expert: both runs)


def test_demo_writes_a_gallery_page(tmp_path):
    res = _cli("demo", "--out", str(tmp_path), "--n", "2", "--steps", "4")  # --model tiny: the shipped model
    assert res.returncode == 0, res.stderr[-3000:]
    page = (tmp_path / "index.html").read_text()
    assert DEMO_PROMPTS[0] in page and DEMO_PROMPTS[1] in page and "detector reads" in page
    for name in ("00.gif", "00.mp4", "01.gif", "01.mp4"):
        assert (tmp_path / name).stat().st_size > 1000
    assert str(tmp_path / "index.html") in res.stdout


def test_evaluate_command_prints_json(tmp_path):
    # --checkpoint tiny and --classifier classifier: the shipped models, by name
    res = _cli("evaluate", "--n", "4", "--steps", "4", "--splits", "test", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout)
    adherence, world = result["adherence"], result["world_test"]
    assert set(adherence) >= {"model", "vae", "real", "chance"} and adherence["n"] == 4
    assert adherence["real"]["color_accuracy"] == 1.0 and adherence["vae"]["color_accuracy"] == 1.0
    assert "image_to_video" in result  # the shipped model reads frames
    assert set(result["direction_control"]) == {"follows_prompt", "follows_layout", "n"}
    assert world["real"]["color_recall"] == 1.0 and world["model"]["fvd"] > 0 and world["n"] == 4
    missing = _cli("evaluate", "--checkpoint", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no pretrained text-to-video model" in missing.stderr


def test_train_all_runs_every_stage_and_resumes(tmp_path):
    args = ["train-all", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--train-clips", "40",
            "--vae-steps", "2", "--dit-steps", "2", "--expert-steps", "3"]
    res = _cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "estimated time" in res.stdout and "total" in res.stdout and "low-noise expert, 3 steps" in res.stdout
    model = TextToVideo.from_pretrained(tmp_path / "run" / "pretrained")  # both experts, as shipped
    assert model.low_noise_below == 0.5 and model.low_noise_model.dit.config.output_conv == 32
    low = json.loads((tmp_path / "run" / "pretrained" / "low_noise" / "manifest.json").read_text())
    assert low["steps"] == 3 and low["init"]["steps"] == 2  # fine-tuned from the main DiT
    low_config = json.loads((tmp_path / "run" / "pretrained" / "low_noise" / "config.json").read_text())
    assert low_config["diffusion"]["max_time"] == 0.5 and low_config["diffusion"]["time_shift"] == 1.0
    assert model("a red circle falls", steps=2).shape == (17, 32, 32, 3)
    again = _cli(*args)  # every stage is done: nothing is rebuilt, both trainings resume at their end
    assert again.returncode == 0, again.stderr[-3000:]
    assert "built" not in again.stdout and "encoded" not in again.stdout
    other = _cli("train-all", "--preset", "small", "--data", str(tmp_path / "data"), "--dry-run")
    assert other.returncode == 2 and "differs in height, width" in other.stderr
