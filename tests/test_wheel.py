"""The shipped models travel with the package: they are package data in the wheel, and a
registered name ("tiny", "classifier", "tiny/vae") finds them from any directory. The
wheel is built from a clean copy of the repository and installed into a fresh virtual
environment (the `wheel_venv` fixture, conftest.py), then used from an empty directory."""

import os
import pathlib
import zipfile

import pytest

from sora_mini import store

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_registered_names_resolve_to_the_packaged_models(tmp_path, monkeypatch):
    assert pathlib.Path(store.PRETRAINED_ROOT) == ROOT / "sora_mini" / "pretrained"  # the editable install
    names = store.pretrained_names()
    assert {"tiny", "classifier", "tiny/vae", "tiny/dit", "tiny/low_noise", "tiny/guidance"} <= set(names)
    monkeypatch.chdir(tmp_path)  # names work from any directory
    tiny = os.path.join(store.PRETRAINED_ROOT, "tiny")
    assert store.resolve_pretrained("tiny") == tiny
    assert store.resolve_pretrained("tiny", "vae") == os.path.join(tiny, "vae")
    assert store.resolve_pretrained("tiny/vae") == os.path.join(tiny, "vae")
    assert store.resolve_pretrained("tiny/vae", "vae") == os.path.join(tiny, "vae")
    assert store.resolve_pretrained("classifier", "vae") == os.path.join(store.PRETRAINED_ROOT, "classifier")
    # An existing path wins over a name, and is returned as an absolute path.
    (tmp_path / "tiny").mkdir()
    assert store.resolve_pretrained("tiny", "vae") == str(tmp_path / "tiny")
    assert store.resolve_pretrained(pathlib.Path("tiny")) == str(tmp_path / "tiny")
    assert store.is_pretrained_name("classifier") and not store.is_pretrained_name("tiny")
    for bad in ("huge", "tiny/nothing", "../tiny", "./classifier", str(tmp_path / "missing"), ""):
        with pytest.raises(FileNotFoundError, match="neither a directory nor a registered name") as e:
            store.resolve_pretrained(bad, what="VAE", hint="train one")
        assert f"no pretrained VAE at {os.path.abspath(bad)}" in str(e.value) and repr(bad) in str(e.value)
        assert "classifier, tiny, tiny/dit" in str(e.value) and "Hugging Face Hub" in str(e.value)
        assert "Train one." in str(e.value)


def test_the_loaders_take_names(tmp_path, monkeypatch):
    from sora_mini import fvd, guidance, model
    from sora_mini.vae import VideoVAE

    monkeypatch.chdir(tmp_path)
    assert VideoVAE.from_pretrained("tiny").config == VideoVAE.from_pretrained("tiny/vae").config
    assert guidance.load_latent_classifier("tiny").config.in_channels == 8
    assert fvd.load_classifier().config == fvd.load_classifier("classifier").config
    _, settings = model.load_text_to_video_model("tiny")
    assert settings == store.read_json(os.path.join(store.resolve_pretrained("tiny/dit"), "config.json"))
    with pytest.raises(FileNotFoundError, match="no pretrained VAE at .*'small'.*registered name"):
        VideoVAE.from_pretrained("small")


def test_the_wheel_carries_every_shipped_file(wheel_venv):
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "sora_mini" / "pretrained").rglob("*") if p.is_file()}
    assert any(p.endswith("params/_METADATA") for p in shipped) and any(p.endswith("log.jsonl") for p in shipped)
    with zipfile.ZipFile(wheel_venv.wheel) as wheel:
        packed = set(wheel.namelist())
    assert not shipped - packed, f"missing from the wheel: {sorted(shipped - packed)[:10]}"
    assert not [n for n in packed if "__pycache__" in n or n.startswith(("tests/", "notebooks/", "data/"))]


def test_the_installed_wheel_generates_from_an_empty_directory(wheel_venv, tmp_path):
    code = f"""
import os, numpy as np, sora_mini
from sora_mini.pipeline import TextToVideo
from sora_mini.vae import VideoVAE
assert os.listdir(".") == [], os.listdir(".")
assert sora_mini.__file__.startswith({str(wheel_venv.root)!r}), sora_mini.__file__
video = TextToVideo.from_pretrained("tiny")("a red circle moves to the right", seed=0)
assert video.dtype == np.uint8 and video.shape == (17, 32, 32, 3), (video.dtype, video.shape)
assert VideoVAE.from_pretrained("tiny").config.latent_channels == 8
try:
    TextToVideo.from_pretrained("no-such-model")
except FileNotFoundError as e:
    print("ERROR:", e)
print("FILE:", sora_mini.__file__)
"""
    res = wheel_venv.run("-c", code, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"FILE: {wheel_venv.root}" in res.stdout and str(ROOT) not in res.stdout.split("FILE:")[1]
    error = res.stdout.split("ERROR:")[1]
    assert "no pretrained text-to-video model" in error and "'no-such-model'" in error
    assert "the package ships classifier, tiny" in error and "Hugging Face Hub" in error
    assert os.listdir(tmp_path) == []  # nothing was written where it ran


def test_the_installed_command_line_defaults_to_the_shipped_model(wheel_venv, tmp_path):
    res = wheel_venv.run("-m", "sora_mini", "generate", "a blue square falls", "--steps", "2", "--out", "v.mp4",
                         cwd=tmp_path)  # --model tiny
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "v.mp4").stat().st_size > 0
