"""The bundled stories260k model, the presets, and end-of-text handling for both architectures."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import alliter
from alliter.config import BUNDLED_MODEL, STUDY_TOKENIZER, AlliterError, TrainConfig
from alliter.train.model import load_models
from alliter.train.rloo import sequence_ce
from alliter.train.rollout import decode_texts, sample_group, sequence_lengths
from alliter.train.trainer import Trainer


def test_bundled_model_ships_inside_the_package_with_its_licence():
    assert BUNDLED_MODEL == Path(alliter.__file__).parent / "models" / "stories260k"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "LICENSE", "ORIGIN.md"):
        assert (BUNDLED_MODEL / name).is_file(), name
    assert "MIT License" in (BUNDLED_MODEL / "LICENSE").read_text()


def test_a_regular_install_ships_the_bundled_model(tmp_path):
    """`pip install .` (not only -e) carries the model and the letter weights, so every Ray node that installs
    alliter has them."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("alliter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "LICENSE", "ORIGIN.md"):
        assert f"alliter/models/stories260k/{name}" in names, name
    assert "alliter/train/letter_weights.json" in names  # the rare-alliteration reward's data


def test_bundled_model_loads_offline_and_writes_its_documented_story(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    assert ids[0].tolist() == [1, 403, 407, 261, 378]
    out = model.generate(ids, do_sample=False, max_length=60, attention_mask=torch.ones_like(ids), pad_token_id=1)
    assert tokenizer.decode(out[0], skip_special_tokens=True).startswith(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
    )
    assert sum(p.numel() for p in model.parameters()) == 260_032


def test_presets_resolve_model_tokenizer_and_lr():
    default = TrainConfig().resolved()
    assert (default.model, default.tokenizer, default.lr) == (str(BUNDLED_MODEL), str(BUNDLED_MODEL), 1e-3)
    study = TrainConfig(model="tinystories-33m", lr=5e-5).resolved()
    assert (study.model, study.tokenizer, study.lr) == ("roneneldan/TinyStories-33M", STUDY_TOKENIZER, 5e-5)
    assert TrainConfig(model="tinystories-33m").resolved().lr == 1e-4
    hub = TrainConfig(model="someone/gpt-neo-thing").resolved()
    assert (hub.tokenizer, hub.lr) == (STUDY_TOKENIZER, 1e-4)
    assert TrainConfig(model="stories260k", tokenizer="my/tok").resolved().tokenizer == "my/tok"


def test_a_local_folder_uses_its_own_tokenizer_and_never_falls_back_to_the_hub(tmp_path, tiny_gpt_neo):
    assert TrainConfig(model=str(tiny_gpt_neo)).resolved().tokenizer == str(tiny_gpt_neo)
    for name in ("config.json", "model.safetensors"):  # a model without its tokenizer
        (tmp_path / name).write_bytes((tiny_gpt_neo / name).read_bytes())
    assert TrainConfig(model=str(tmp_path)).resolved().tokenizer is None  # never the hub's
    with pytest.raises(AlliterError, match="has no tokenizer .* pass --tokenizer NAME_OR_FOLDER"):
        load_models(TrainConfig(model=str(tmp_path)).resolved())
    assert TrainConfig(model=str(tmp_path), tokenizer=str(tiny_gpt_neo)).resolved().tokenizer == str(tiny_gpt_neo)
    assert TrainConfig(model="someone/a-hub-model").resolved().tokenizer == STUDY_TOKENIZER  # a hub id: the study's


def test_unknown_local_path_is_the_one_line_error():
    with pytest.raises(AlliterError, match=r"does not exist; pass --model PATH"):
        load_models(TrainConfig(model="./no/such/model").resolved())


def test_end_of_text_comes_from_the_tokenizer_and_generation_config(tiny_gpt_neo):
    bundled = load_models(TrainConfig(model="stories260k").resolved())
    assert bundled.eos_ids == [1] and bundled.tokenizer.pad_token_id == 1
    neo = load_models(TrainConfig(model=str(tiny_gpt_neo)).resolved())
    assert neo.eos_ids == [neo.tokenizer.convert_tokens_to_ids("<|endoftext|>")]


@pytest.mark.parametrize("fast", [True, False])
def test_bundled_group_stops_at_its_end_of_text(fast):
    """Long samples let the bundled model end stories with `<s>`; everything after is masked out."""
    m = load_models(TrainConfig(model="stories260k").resolved())
    prompt = m.tokenizer("Once upon a time", return_tensors="pt").input_ids[0]
    torch.manual_seed(3)
    tokens = sample_group(m.policy, prompt, 10, 300, 50, 1.0, m.eos_ids, fast=fast)
    lengths = sequence_lengths(tokens, len(prompt), m.eos_ids)
    ended = [i for i in range(10) if lengths[i] < 300]
    assert ended, "no sample ended within 300 tokens"
    i = ended[0]
    assert tokens[i, lengths[i] - 1] == 1 and 1 not in tokens[i, len(prompt) : lengths[i] - 1].tolist()
    with torch.no_grad():
        batched = sequence_ce(m.policy, tokens, lengths)
        alone = sequence_ce(m.policy, tokens[i : i + 1, : lengths[i]], lengths[i : i + 1])
        scrambled = tokens.clone()
        scrambled[i, lengths[i] :] = 7
        torch.testing.assert_close(batched[i], alone[0])
        torch.testing.assert_close(sequence_ce(m.policy, scrambled, lengths), batched)
    text = decode_texts(m.tokenizer, tokens, lengths)[i]
    after = m.tokenizer.decode(tokens[i, lengths[i] :], skip_special_tokens=True).strip()
    assert text.startswith("Once upon a time") and (not after or not text.endswith(after))


def test_trainer_counts_new_tokens_up_to_the_end(tmp_path):
    trainer = Trainer(TrainConfig(max_length=400, seed=3, threads=1), tmp_path)
    metrics, records = trainer.step()
    prompt_len = len(trainer.prompt_ids)
    assert any(r["new_tokens"] < 400 - prompt_len for r in records)
    assert metrics["mean_new_tokens"] == pytest.approx(sum(r["new_tokens"] for r in records) / 10)
