"""The `packages` benchmark: index parsing, labels, rare classes, splits, cache, errors, meters."""

import gzip
import json
import math
import random
import shutil
import subprocess
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from tokenmtl.data import packages as pk
from tokenmtl.data.base import create_benchmark
from tokenmtl.data.debian_index import (
    IndexText,
    expand_tags,
    parse_records,
    parse_stanzas,
    read_index,
    strip_area,
)
from tokenmtl.data.errors import DataError
from tokenmtl.losses import classification_loss, scalar_regression_loss
from tokenmtl.metrics import ClassificationMeter, ScalarRegressionMeter
from tokenmtl.tasks import classification_task, scalar_regression_task


def stanza(name, description, section="utils", tags=None, size=100, multi_arch=None):
    """One Packages stanza as apt writes it (long description and Tag wrapped on continuation lines)."""
    lines = [f"Package: {name}", "Version: 1.0-1"]
    if size is not None:
        lines.append(f"Installed-Size: {size}")
    if multi_arch:
        lines.append(f"Multi-Arch: {multi_arch}")
    lines += [f"Description: {description}", " A longer description that is not the input.", " ."]
    if tags:
        lines.append("Tag: " + ",\n ".join(tags))
    if section is not None:
        lines.append(f"Section: {section}")
    lines.append("Priority: optional")
    return "\n".join(lines) + "\n"


SECTIONS = ["libs"] * 5 + ["python"] * 3 + ["contrib/games"] * 2  # 50% / 30% / 20%
ROLES = [["role::program"], ["role::shared-lib"], [], ["role::program", "role::plugin"], ["role::TODO"]]


def synthetic_index(count=60, prefix="pkg", start=0):
    """`count` packages with cycling sections, role tags and sizes 2**(i % 12) KiB."""
    return "\n".join(
        stanza(
            f"{prefix}{i:04d}",
            f"{prefix} tool number {i} for testing",
            section=SECTIONS[i % len(SECTIONS)],
            tags=ROLES[i % len(ROLES)],
            size=2 ** (i % 12),
            multi_arch=["same", "foreign", None][i % 3],
        )
        for i in range(start, start + count)
    )


def write(tmp_path, text, name="Packages"):
    path = tmp_path / name
    path.write_text(text)
    return path


def bench(tmp_path, text=None, **options):
    source = write(tmp_path, synthetic_index() if text is None else text)
    options = {"min_class_count": 1, "progress": False, "cache_dir": tmp_path / "cache", **options}
    return pk.PackagesBenchmark(source=source, **options)


def first_text_in(split, seed=0, template="probe text {}"):
    """A description that the split rule sends to `split` (found by trying numbered texts)."""
    for i in range(1000):
        if pk.assign_split(template.format(i), seed, 0.1, 0.1) == split:
            return template.format(i)
    raise AssertionError("no text found")


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_stanzas_joins_continuation_lines_and_numbers_stanzas():
    text = "Package: a\nTag: role::program,\n use::editing\n\n\nPackage: b\nDescription: x\n"
    stanzas = parse_stanzas(text, "mem")
    assert [line for line, _ in stanzas] == [1, 6]
    assert stanzas[0][1] == {"Package": "a", "Tag": "role::program,\nuse::editing"}
    assert stanzas[1][1] == {"Package": "b", "Description": "x"}


def test_expand_tags_handles_wrapped_lists_and_brace_groups():
    assert expand_tags("role::program, implemented-in::c,\n use::editing".replace("\n", " ")) == {
        "role::program",
        "implemented-in::c",
        "use::editing",
    }
    assert expand_tags("devel::{lang:c,library}, role::devel-lib") == {
        "devel::lang:c",
        "devel::library",
        "role::devel-lib",
    }
    assert expand_tags("") == frozenset()


def test_strip_area_removes_archive_area_prefix():
    assert [strip_area(s) for s in ("net", "contrib/games", "non-free/libs", "universe/python")] == [
        "net",
        "games",
        "libs",
        "python",
    ]


def test_parse_records_reads_fields_keeps_first_duplicate_and_skips_missing_descriptions():
    text = (
        stanza("a", "First  a   desc", section="non-free/net", tags=["role::program"], size=7, multi_arch="Same")
        + "\n"
        + stanza("a", "second copy of a")
        + "\n"
        + "Package: nodesc\nSection: libs\n\n"
        + stanza("b", "b desc", section=None, size=None)
    )
    records = parse_records(IndexText(text, "mem", "0"))
    assert [r.name for r in records] == ["a", "b"]
    a, b = records
    assert (a.description, a.section, a.installed_size, a.multi_arch) == ("First a desc", "net", 7, "same")
    assert a.tags == {"role::program"}
    assert (b.section, b.installed_size, b.multi_arch, b.tags) == (None, None, "no", frozenset())
    assert b.line == 24  # 10 + 1 + 8 + 1 + 2 + 1 lines before it


def test_facet_value_is_single_valued_and_ignores_todo():
    assert pk.facet_value({"role::program", "use::editing"}, "role") == "program"
    assert pk.facet_value({"role::program", "role::plugin"}, "role") is None
    assert pk.facet_value({"role::TODO"}, "role") is None
    assert pk.facet_value({"role::TODO", "role::data"}, "role") == "data"
    assert pk.facet_value(set(), "implemented-in") is None


def test_compressed_index_reads_like_the_plain_one(tmp_path):
    text = synthetic_index(5)
    plain = write(tmp_path, text)
    packed = tmp_path / "Packages.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert read_index(packed).text == read_index(plain).text


# ---------------------------------------------------------------------------------------------
# Errors users see


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_index_is_one_clear_error(tmp_path, text):
    with pytest.raises(DataError, match="empty.*Packages"):
        bench(tmp_path, text).dataset("train", False)


@pytest.mark.parametrize(
    "text, message",
    [
        ("Package: a\nDescription: x\nthis line has no colon\n", "line 3 is not `Field: value`"),
        (" leading continuation\nPackage: a\n", "line 1 is a continuation line"),
        ("Package: a\nDescription: x\n\nSection: libs\nDescription: y\n", "stanza starting at line 4 has no Package"),
        ("Package: a\nSection: libs\nSection: net\n", "field 'Section' repeated in the stanza starting at line 1"),
        ("Package: a\nDescription: x\nInstalled-Size: 12kB\n", "package 'a' .*Installed-Size '12kB'"),
    ],
)
def test_malformed_index_error_names_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as info:
        bench(tmp_path, text).dataset("train", False)
    assert str(tmp_path / "Packages") in str(info.value)


def test_missing_source_file_names_it(tmp_path):
    with pytest.raises(DataError, match="not found.*nowhere"):
        pk.PackagesBenchmark(source=tmp_path / "nowhere", cache_dir=tmp_path).dataset("train", False)


def test_no_apt_and_no_source_says_how_to_provide_an_index(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=r"apt-cache.*not installed.*benchmark\.source: PATH.*apt-get update"):
        pk.PackagesBenchmark(cache_dir=tmp_path).dataset("train", False)


def test_apt_printing_nothing_says_how_to_provide_an_index(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-cache")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, b"\n", b""))
    with pytest.raises(DataError, match=r"printed nothing.*benchmark\.source: PATH.*apt-get update"):
        pk.PackagesBenchmark(cache_dir=tmp_path).dataset("train", False)


def test_bad_options_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="val_fraction must be in \\(0, 1\\), got 1.5"):
        pk.PackagesBenchmark(val_fraction=1.5)
    with pytest.raises(ValueError, match="must be < 1"):
        pk.PackagesBenchmark(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="min_class_count must be an integer >= 0, got -1"):
        pk.PackagesBenchmark(min_class_count=-1)


def test_class_only_in_val_is_an_error_without_merging_and_other_with_merging(tmp_path):
    text = synthetic_index(40) + "\n" + stanza("zz-only-val", first_text_in("val"), section="zope")
    strict = bench(tmp_path, text, min_class_count=0)
    with pytest.raises(DataError, match="task 'section': class 'zope' occurs in the val split but never in train"):
        strict.dataset("train", False, tasks=["section"])
    assert len(strict.dataset("train", False, tasks=["multiarch"])) > 0  # other tasks stay usable
    merging = bench(tmp_path, text, min_class_count=1)
    classes = merging.class_names("section")
    assert classes == ["games", "libs", "python", "other"]
    val = merging.dataset("val", False, tasks=["section"])
    assert int(val[val.packages.index("zz-only-val")]["section"]) == classes.index("other")
    summary = json.loads(merging.summary_path().read_text())
    assert summary["tasks"]["section"]["merged_into_other"] == {"zope": 0}


def test_a_task_left_with_one_class_is_an_error_only_when_used(tmp_path):
    benchmark = bench(tmp_path, min_class_count=10_000)
    with pytest.raises(DataError, match="task 'section' has 1 class.*lower benchmark.min_class_count"):
        benchmark.task_spec("section")
    assert len(benchmark.dataset("train", False, tasks=["size"])) > 0


def test_index_without_debtags_reports_the_facet_tasks_when_used(tmp_path):
    text = "\n".join(stanza(f"p{i}", f"plain tool {i}", section=SECTIONS[i % 10]) for i in range(40))
    benchmark = bench(tmp_path, text)
    with pytest.raises(DataError, match="task 'role' has 0 class"):
        benchmark.dataset("train", False, tasks=["section", "role"])
    assert benchmark.class_names("section") == ["games", "libs", "python"]


# ---------------------------------------------------------------------------------------------
# Tasks, targets and the rare-class rule


def test_items_carry_text_and_targets_equal_to_the_maintainers_labels(tmp_path):
    benchmark = bench(tmp_path)
    records = {r.name: r for r in parse_records(read_index(tmp_path / "Packages"))}
    tasks = ("section", "role", "multiarch", "size")
    for split in pk.SPLITS:
        dataset = benchmark.dataset(split, train=split == "train", tasks=tasks)
        for i in range(len(dataset)):
            item, record = dataset[i], records[dataset.packages[i]]
            assert item["text"] == record.description
            for task in ("section", "role", "multiarch"):
                assert item[task].dtype == torch.int64 and item[task].dim() == 0
                expected = pk.raw_label(record, task)
                got = int(item[task])
                if expected is None:
                    assert got == pk.IGNORE_LABEL
                else:
                    assert benchmark.class_names(task)[got] == expected
            assert item["size"].dtype == torch.float32 and item["size"].dim() == 0
            expected_size = (math.log1p(record.installed_size) - benchmark.size_mean) / benchmark.size_std
            assert float(item["size"]) == pytest.approx(expected_size, abs=1e-6)
    assert benchmark.class_names("section") == ["games", "libs", "python"]
    assert benchmark.class_names("multiarch") == ["foreign", "no", "same"]


def test_role_ignores_untagged_multi_valued_and_todo_packages(tmp_path):
    benchmark = bench(tmp_path)
    dataset = benchmark.dataset("train", False, tasks=["role"])
    index = [int(p[3:]) for p in dataset.packages]
    for i, target in zip(index, dataset.targets["role"].tolist()):
        if i % 5 in (2, 3, 4):  # no role, two roles, role::TODO
            assert target == pk.IGNORE_LABEL
        else:
            assert benchmark.class_names("role")[target] == ("program" if i % 5 == 0 else "shared-lib")


def test_size_is_standardised_with_train_mean_and_std(tmp_path):
    benchmark = bench(tmp_path)
    train = benchmark.dataset("train", False, tasks=["size"])
    logs = [math.log1p(2 ** (int(p[3:]) % 12)) for p in train.packages]
    mean = sum(logs) / len(logs)
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs))
    assert benchmark.size_mean == pytest.approx(mean)
    assert benchmark.size_std == pytest.approx(std)
    standardised = train.targets["size"].double()
    assert float(standardised.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(standardised.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_missing_installed_size_is_nan_and_skipped_by_loss_and_meter(tmp_path):
    text = synthetic_index(40) + "\n" + stanza("nosize", first_text_in("train"), size=None)
    benchmark = bench(tmp_path, text)
    train = benchmark.dataset("train", False, tasks=["size"])
    target = train[train.packages.index("nosize")]["size"]
    assert math.isnan(float(target))
    spec = benchmark.task_spec("size")
    batch = train.targets["size"]
    pred = torch.zeros(len(batch), requires_grad=True)
    loss = spec.loss(pred, batch)
    valid = ~torch.isnan(batch)
    assert float(loss.detach()) == pytest.approx(float(batch[valid].abs().mean()), rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[~valid].abs().sum()) == 0.0


def test_rare_classes_merge_into_other_by_train_count(tmp_path):
    benchmark = bench(tmp_path, synthetic_index(200), min_class_count=40)
    train = benchmark.dataset("train", False, tasks=["section"])
    summary = json.loads(benchmark.summary_path().read_text())
    raw = Counter(SECTIONS[int(p[3:]) % len(SECTIONS)].split("/")[-1] for p in train.packages)
    assert raw["games"] < 40 <= raw["python"]  # the fixture: 20% / 30% of about 160 train packages
    assert benchmark.class_names("section") == ["libs", "python", "other"]
    assert summary["tasks"]["section"]["merged_into_other"] == {"games": raw["games"]}
    assert summary["tasks"]["section"]["counts"]["train"] == {
        "libs": raw["libs"],
        "python": raw["python"],
        "other": raw["games"],
    }
    other = benchmark.class_names("section").index("other")
    games = [
        int(t) == other
        for p, t in zip(train.packages, train.targets["section"])
        if SECTIONS[int(p[3:]) % len(SECTIONS)] == "contrib/games"
    ]
    assert games and all(games)


def test_identical_descriptions_collapse_to_the_first_package_name(tmp_path):
    text = "\n".join([stanza("zeta", "same words"), stanza("alpha", "same  words"), synthetic_index(30)])
    benchmark = bench(tmp_path, text)
    everywhere = [p for s in pk.SPLITS for p in benchmark.dataset(s, False).packages]
    assert "alpha" in everywhere and "zeta" not in everywhere
    summary = json.loads(benchmark.summary_path().read_text())
    assert summary["packages"] == {"in_index": 32, "distinct_descriptions": 31, "used": 31}


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_fractions_follow_the_hash():
    counts = Counter(pk.assign_split(f"text {i}", 3, 0.2, 0.1) for i in range(4000))
    assert counts["test"] / 4000 == pytest.approx(0.1, abs=0.02)
    assert counts["val"] / 4000 == pytest.approx(0.2, abs=0.025)


def test_splits_are_deterministic_and_depend_on_the_seed(tmp_path):
    a = bench(tmp_path, cache_dir=tmp_path / "a").table["splits"]
    b = bench(tmp_path, cache_dir=tmp_path / "b").table["splits"]
    c = bench(tmp_path, cache_dir=tmp_path / "c", seed=1).table["splits"]
    assert a == b
    assert a["train"]["packages"] != c["train"]["packages"]


def test_a_packages_split_does_not_depend_on_the_rest_of_the_index(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir(), big.mkdir()
    one = bench(small, synthetic_index(60)).table["splits"]
    both = bench(big, synthetic_index(60) + "\n" + synthetic_index(80, prefix="other")).table["splits"]
    where_one = {p: s for s in pk.SPLITS for p in one[s]["packages"]}
    where_both = {p: s for s in pk.SPLITS for p in both[s]["packages"]}
    assert where_one == {p: where_both[p] for p in where_one}


def test_max_samples_caps_the_number_of_packages(tmp_path):
    benchmark = bench(tmp_path, synthetic_index(120), max_samples=50)
    sizes = [len(benchmark.dataset(s, False)) for s in pk.SPLITS]
    assert sum(sizes) == 50


def test_train_size_is_a_seeded_nested_subset_with_the_full_tables_classes(tmp_path):
    full = bench(tmp_path, synthetic_index(120))
    train = full.dataset("train", False)
    small = bench(tmp_path, synthetic_index(120), train_size=10)
    smaller = bench(tmp_path, synthetic_index(120), train_size=5)
    picked, fewer = small.dataset("train", False), smaller.dataset("train", False)
    assert len(picked) == 10 and len(fewer) == 5 and set(fewer.packages) <= set(picked.packages)
    # Brute force: the 10 smallest hashes of (seed, "train_size", text), kept in table order.
    ranked = sorted(range(len(train)), key=lambda i: pk.unit_hash(0, "train_size", train.texts[i]))[:10]
    assert picked.packages == [train.packages[i] for i in sorted(ranked)]
    assert picked.packages != train.packages[:10]  # not the alphabetical prefix
    for task in pk.PackagesBenchmark.default_tasks:
        rows = [train.packages.index(p) for p in picked.packages]
        assert torch.equal(picked.targets[task], train.targets[task][rows])
        if task != "size":
            assert small.class_names(task) == full.class_names(task)
    assert small.size_mean == full.size_mean
    assert small.dataset("val", False).packages == full.dataset("val", False).packages
    with pytest.raises(ValueError, match="train_size=500 exceeds"):
        bench(tmp_path, synthetic_index(120), train_size=500).dataset("train", False)
    with pytest.raises(ValueError, match="train_size must be"):
        bench(tmp_path, synthetic_index(120), train_size=0)


def test_empty_split_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="split\\(s\\) .* would be empty"):
        bench(tmp_path, synthetic_index(3)).dataset("train", False)


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_is_reused_and_keyed_by_settings_and_source(tmp_path, monkeypatch):
    first = bench(tmp_path)
    table = first.table
    assert first.cache_path().is_file() and first.summary_path().is_file()
    monkeypatch.setattr(pk, "build_table", lambda *a, **k: pytest.fail("rebuilt despite the cache"))
    again = bench(tmp_path)
    assert again.cache_path() == first.cache_path() and again.table == table
    assert bench(tmp_path, seed=5).cache_path() != first.cache_path()
    assert bench(tmp_path, min_class_count=2).cache_path() != first.cache_path()
    assert bench(tmp_path, synthetic_index(61)).cache_path() != first.cache_path()


def test_failed_write_leaves_no_partial_cache_file(tmp_path, monkeypatch):
    real_dump = json.dump

    def dump_then_fail(content, handle, **kwargs):
        real_dump({"partial": True}, handle)
        raise OSError("disk full")

    monkeypatch.setattr(pk.json, "dump", dump_then_fail)
    benchmark = bench(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        benchmark.dataset("train", False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(pk.json, "dump", real_dump)
    assert len(bench(tmp_path).dataset("train", False)) > 0


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path):
    first = bench(tmp_path)
    expected = first.table
    first.cache_path().write_text('{"splits": ')
    with pytest.warns(UserWarning, match="unreadable"):
        assert bench(tmp_path).table == expected


def test_registry_builds_the_benchmark_from_a_config_section(tmp_path):
    source = write(tmp_path, synthetic_index())
    benchmark = create_benchmark(
        {"name": "packages", "source": str(source), "cache_dir": str(tmp_path), "min_class_count": 1}, progress=False
    )
    assert isinstance(benchmark, pk.PackagesBenchmark)
    spec = benchmark.task_spec("section")
    assert spec.out_channels == 3 and spec.primary_metric == "macroF1" and not spec.lower_is_better
    assert benchmark.task_spec("size").primary_metric == "mae"


# ---------------------------------------------------------------------------------------------
# Losses, meters and task specs


def brute_force_scores(targets, predictions, ignore=-100):
    """Accuracy and macro-F1 (%) over classes present in targets or predictions, by loops."""
    pairs = [(t, p) for t, p in zip(targets, predictions) if t != ignore]
    labels = sorted({t for t, _ in pairs} | {p for _, p in pairs})
    f1s = []
    for c in labels:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        fp = sum(1 for t, p in pairs if t != c and p == c)
        fn = sum(1 for t, p in pairs if t == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return 100 * sum(t == p for t, p in pairs) / len(pairs), 100 * sum(f1s) / len(f1s)


def test_classification_meter_matches_brute_force_over_batches():
    rng = random.Random(0)
    meter = ClassificationMeter(6)
    all_targets, all_predictions = [], []
    for _ in range(4):
        logits = torch.randn(17, 6)
        logits[:, 5] -= 100.0  # class 5 is never predicted and never a target: excluded from the mean
        targets = [rng.choice([0, 0, 0, 1, 2, 3, 4, -100]) for _ in range(17)]
        meter.update(logits, torch.tensor(targets))
        all_targets += targets
        all_predictions += logits.argmax(1).tolist()
    accuracy, macro = brute_force_scores(all_targets, all_predictions)
    scores = meter.compute()
    assert scores["accuracy"] == pytest.approx(accuracy)
    assert scores["macroF1"] == pytest.approx(macro)
    assert meter.per_class_f1()[5] is None


def test_classification_meter_hand_case():
    meter = ClassificationMeter(3)
    meter.update(torch.eye(3)[[0, 1, 1, 2]], torch.tensor([0, 1, 0, -100]))
    # class 0: tp 1 fn 1 -> 2/3; class 1: tp 1 fp 1 -> 2/3; class 2 is predicted only for the
    # ignored example, so it is absent and left out of the mean
    assert meter.compute() == pytest.approx({"macroF1": 100 * (2 / 3 + 2 / 3) / 2, "accuracy": 100 * 2 / 3})
    meter.update(torch.eye(3)[[2]], torch.tensor([1]))  # now class 2 is predicted: F1 0 counts
    assert meter.compute()["macroF1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def test_scalar_meter_reports_mae_in_original_units():
    meter = ScalarRegressionMeter(scale=2.0)
    meter.update(torch.tensor([[1.0], [0.0], [5.0]]), torch.tensor([0.5, math.nan, 3.0]))
    meter.update(torch.tensor([-1.0]), torch.tensor([0.0]))
    errors = [0.5, 2.0, 1.0]
    assert meter.compute() == pytest.approx(
        {
            "mae": 2.0 * sum(errors) / 3,
            "rmse": 2.0 * math.sqrt(sum(e * e for e in errors) / 3),
            "mae_standardised": sum(errors) / 3,
        }
    )


def test_classification_loss_is_mean_ce_over_labelled_examples():
    logits = torch.randn(5, 4, requires_grad=True)
    target = torch.tensor([1, -100, 3, 0, -100])
    expected = F.cross_entropy(logits[[0, 2, 3]], target[[0, 2, 3]])
    assert float(classification_loss(logits, target).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    none = classification_loss(logits, torch.full((5,), -100))
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="class ids \\[7\\] out of range \\[0, 4\\)"):
        classification_loss(logits, torch.tensor([7, 0, 0, 0, 0]))


def test_scalar_regression_loss_accepts_b_and_b1_predictions():
    pred = torch.tensor([1.0, 2.0, 4.0])
    target = torch.tensor([0.0, math.nan, 1.0])
    assert float(scalar_regression_loss(pred, target)) == pytest.approx(2.0)
    assert float(scalar_regression_loss(pred[:, None], target)) == pytest.approx(2.0)
    assert float(scalar_regression_loss(pred, target, kind="mse")) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="pred must be \\(B,\\) or \\(B, 1\\), got shape \\(3, 2\\)"):
        scalar_regression_loss(torch.zeros(3, 2), target)


def test_task_factories_wire_loss_meter_and_primary():
    spec = classification_task(4, "role", primary_metric="accuracy")
    assert (spec.out_channels, spec.primary_metric, spec.lower_is_better) == (4, "accuracy", False)
    meter = spec.make_meter()
    meter.update(torch.eye(4)[[0, 1]], torch.tensor([0, 2]))
    assert meter.compute()["accuracy"] == pytest.approx(50.0)
    size = scalar_regression_task("size", scale=3.0)
    meter = size.make_meter()
    meter.update(torch.tensor([1.0]), torch.tensor([0.0]))
    assert (size.out_channels, size.primary_metric, meter.compute()["mae"]) == (1, "mae", pytest.approx(3.0))
    with pytest.raises(ValueError, match="primary_metric must be one of"):
        classification_task(4, "role", primary_metric="f1")


# ---------------------------------------------------------------------------------------------
# The machine's real index


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="apt-cache is not installed")
def test_real_index_from_apt_builds_every_task(tmp_path):
    benchmark = pk.PackagesBenchmark(cache_dir=tmp_path, max_samples=4000, min_class_count=20, progress=False)
    try:
        sizes = {s: len(benchmark.dataset(s, False)) for s in pk.SPLITS}
    except DataError as exc:
        if "no package index" in str(exc) or "split(s)" in str(exc):
            pytest.skip(f"apt-cache dumpavail gives no usable index here: {exc}")
        raise
    assert sum(sizes.values()) == 4000 and min(sizes.values()) > 250
    assert {"libs", "python", "devel", "doc"} <= set(benchmark.class_names("section"))
    assert {"program", "shared-lib", "devel-lib"} <= set(benchmark.class_names("role"))
    assert {"foreign", "no", "same"} <= set(benchmark.class_names("multiarch"))
    assert 1.0 < benchmark.size_std < 4.0
    item = benchmark.dataset("test", False, tasks=benchmark.available_tasks)[0]
    assert isinstance(item["text"], str) and set(item) == {"text", *benchmark.available_tasks}


def test_data_root_folder_finds_its_packages_file(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "Packages.gz").write_bytes(gzip.compress(synthetic_index().encode()))
    benchmark = pk.PackagesBenchmark(
        root=tmp_path / "mirror", cache_dir=tmp_path / "c", min_class_count=1, progress=False
    )
    assert benchmark.source == str(tmp_path / "mirror" / "Packages.gz")
    assert benchmark.class_names("section") == ["games", "libs", "python"]
    with pytest.raises(DataError, match="no package index in the data folder"):
        pk.PackagesBenchmark(root=tmp_path / "c")


def test_unsupported_compression_is_named(tmp_path):
    path = tmp_path / "Packages.lz4"
    path.write_bytes(b"\x04\x22\x4d\x18")
    with pytest.raises(DataError, match="compressed as .lz4 is not supported"):
        read_index(path)
