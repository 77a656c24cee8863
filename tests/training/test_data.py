"""Readers of every format, duplicate linking, splits, the task-mixing sampler and the curriculum."""
import itertools
import json
from collections import Counter

import pytest

from unirep_training.data import (Sample, Side, TaskMixSampler, VisionCurriculum, duplicate_matrix, read_emoji,
                                  read_en_vi_parallel, read_flickr8k, read_jsonl, read_source, read_stsb,
                                  read_vi_captions, split_of)


def test_flickr8k_reader(tiny_data):
    train = read_flickr8k(tiny_data / "flickr8k", "train")
    dev = read_flickr8k(tiny_data / "flickr8k", "dev")
    assert len(train) == 16 and len(dev) == 8
    s = train[0]
    assert s.task == "caption" and s.a.text == "a red photo ." and s.a.prefix == "query"
    assert s.b.text is None and s.b.prefix == "document" and s.b.images[0].endswith("train/train_red.jpg")
    assert train[0].group == train[1].group != train[2].group  # two captions of one image
    assert not {x.b.images for x in train} & {x.b.images for x in dev}
    with pytest.raises(ValueError, match="split"):
        read_flickr8k(tiny_data / "flickr8k", "test")


def test_vi_captions_split_by_image(tiny_data):
    all_ = read_vi_captions(tiny_data / "vi_captions", "all")
    tr = read_vi_captions(tiny_data / "vi_captions", "train", dev_fraction=0.5, seed=1)
    dv = read_vi_captions(tiny_data / "vi_captions", "dev", dev_fraction=0.5, seed=1)
    assert len(all_) == 12 and len(tr) + len(dv) == 12
    assert not {s.b.images for s in tr} & {s.b.images for s in dv}  # no image on both sides
    assert [s.a.text for s in read_vi_captions(tiny_data / "vi_captions", "dev", dev_fraction=0.5, seed=1)] == \
        [s.a.text for s in dv]  # deterministic
    assert "màu" in all_[0].a.text


def test_emoji_reader_languages_and_keywords(tiny_data):
    both = read_emoji(tiny_data / "emoji")
    assert len(both) == 8 and Counter(s.meta["lang"] for s in both) == {"en": 4, "vi": 4}
    assert both[0].a.text == "red circle" and both[1].a.text == "hình tròn red"
    assert both[0].group == both[1].group  # same picture
    en = read_emoji(tiny_data / "emoji", languages=["en"], keywords=True)
    assert en[0].a.text == "red circle: red, circle"


def test_stsb_reader(tiny_data):
    rows = read_stsb(tiny_data / "stsb", "train")
    assert len(rows) == 10  # the row with extra trailing columns is read too
    assert rows[0].task == "text_pair" and rows[0].score == pytest.approx(1.0)
    assert rows[1].score == pytest.approx(0.5) and rows[2].score == pytest.approx(0.08)
    assert rows[0].a.prefix == rows[0].b.prefix == "text_pair"
    assert rows[1].b.text == "a pink cat"


def test_en_vi_reader_split_by_page(tiny_data):
    tr = read_en_vi_parallel(tiny_data / "en_vi_parallel", "train", dev_fraction=0.5, seed=3)
    dv = read_en_vi_parallel(tiny_data / "en_vi_parallel", "dev", dev_fraction=0.5, seed=3)
    assert len(tr) + len(dv) == 12
    assert not {s.meta["page"] for s in tr} & {s.meta["page"] for s in dv}
    s = (tr + dv)[0]
    assert s.task == "retrieval" and s.a.prefix == "query" and s.b.prefix == "document"
    assert s.a.text.startswith("The ") and s.b.text.startswith("Nút ")


def test_jsonl_reader(tiny_data, tmp_path):
    pairs = read_jsonl(tiny_data / "pairs.jsonl")
    assert len(pairs) == 6 and pairs[0].task == "retrieval" and pairs[0].b.text.startswith("the red house")
    vqa = read_jsonl(tiny_data / "vqa.jsonl")
    assert vqa[0].task == "vqa_single" and vqa[0].a.prefix == "vqa_single"
    assert vqa[0].a.images[0] == str(tiny_data / "flickr8k/train/train_red.jpg")  # relative to the file
    assert vqa[0].group == "q1"
    assert vqa[1].task == "text_pair" and vqa[1].score == pytest.approx(0.9) and vqa[1].a.text == "a dog"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": "nope", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: unknown task"):
        read_jsonl(bad)
    bad.write_text('{"task": "caption", "a": {"text": ""}, "b": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        read_jsonl(bad)
    bad.write_text('{"task": "text_pair", "a": "x", "b": "y", "score": 3}\n')
    with pytest.raises(ValueError, match="score"):
        read_jsonl(bad)


def test_read_source_resolves_paths(tiny_data):
    assert len(read_source("flickr8k", tiny_data, split="dev")) == 8
    assert len(read_source("jsonl", tiny_data, "pairs.jsonl")) == 6
    with pytest.raises(ValueError, match="unknown reader"):
        read_source("nope", tiny_data)
    with pytest.raises(ValueError, match="not found"):
        read_source("stsb", tiny_data / "missing")


def test_duplicate_matrix_is_pairwise():
    def cap(text, image):
        return Sample("caption", Side(text, (), "query"), Side(None, (image,), "document"), group=image)

    # x and y share a caption, y and z share a caption, x and z share nothing
    s = [cap("a dog", "x.jpg"), cap("a dog", "y.jpg"), cap("a cat", "y.jpg"), cap("a cat", "z.jpg"),
         cap("a cow", "w.jpg")]
    m = duplicate_matrix(s)
    assert m[0, 1] and m[1, 2] and m[2, 3]  # same text / same image
    assert not m[0, 3] and not m[0, 4]  # not transitive
    assert (m == m.T).all() and m.diagonal().all()


def test_split_is_deterministic_and_proportional():
    keys = [f"page{i}" for i in range(2000)]
    dev = [k for k in keys if split_of(k, 0.1, 0) == "dev"]
    assert 150 < len(dev) < 250
    assert dev == [k for k in keys if split_of(k, 0.1, 0) == "dev"]
    assert dev != [k for k in keys if split_of(k, 0.1, 1) == "dev"]


def _toy_sources():
    def make(prefix, n, images=False):
        return [Sample("caption" if images else "retrieval", Side(f"{prefix}{i}", (), "query"),
                       Side(None, (f"{prefix}{i}.jpg",), "document") if images else Side(f"d{prefix}{i}", (), "document"),
                       group=f"{prefix}{i}") for i in range(n)]

    return {"img": make("i", 10, True), "txt": make("t", 7), "txt2": make("u", 5)}


def test_sampler_proportions_and_determinism():
    src = _toy_sources()
    w = {"img": 2.0, "txt": 1.0, "txt2": 1.0}
    s1 = TaskMixSampler(src, w, 3, seed=5)
    counts = Counter(s1.batch(step)[0] for step in range(4000))
    assert counts["img"] / 4000 == pytest.approx(0.5, abs=0.03)
    assert counts["txt"] / 4000 == pytest.approx(0.25, abs=0.03)
    a = TaskMixSampler(src, w, 3, seed=5)
    b = TaskMixSampler(src, w, 3, seed=5)
    c = TaskMixSampler(src, w, 3, seed=6)
    runs = [[x.batch(k) for k in range(50)] for x in (a, b, c)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # every sample of a source is seen once per epoch
    d = TaskMixSampler({"txt": src["txt"]}, {"txt": 1}, 7, seed=0)
    assert sorted(x.a.text for x in d.batch(0)[1]) == sorted(x.a.text for x in src["txt"])


def test_sampler_state_resumes_exactly():
    src = _toy_sources()
    w = {"img": 1.0, "txt": 1.0, "txt2": 1.0}
    full = TaskMixSampler(src, w, {"img": 4, "txt": 3, "txt2": 2}, seed=1)
    expect = [full.batch(k) for k in range(30)]
    first = TaskMixSampler(src, w, {"img": 4, "txt": 3, "txt2": 2}, seed=1)
    got = [first.batch(k) for k in range(12)]
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON
    second = TaskMixSampler(src, w, {"img": 4, "txt": 3, "txt2": 2}, seed=1)
    second.load_state_dict(state)
    got += [second.batch(k) for k in range(12, 30)]
    assert got == expect
    with pytest.raises(ValueError, match="seed"):
        TaskMixSampler(src, w, 2, seed=2).load_state_dict(state)


def _captioned(images: int, captions: int):
    return [Sample("caption", Side(f"cap {i}.{j}", (), "query"), Side(None, (f"im{i}.jpg",), "document"),
                   group=f"im{i}") for i in range(images) for j in range(captions)]


def test_sampler_per_group_draws_pictures_with_several_captions():
    src = {"img": _captioned(9, 5)}
    s = TaskMixSampler(src, {"img": 1.0}, 12, seed=3, per_group={"img": 4})
    seen = Counter()
    for step in range(30):
        _, batch = s.batch(step)
        assert len(batch) == 12
        per_image = Counter(x.group for x in batch)
        # 3 pictures x 4 captions, each caption once
        assert sorted(per_image.values()) == [4, 4, 4]
        assert len({x.a.text for x in batch}) == 12
        seen.update(x.a.text for x in batch)
    # 90 groups drawn = 10 epochs over 9 pictures: every picture 10 times, and the 4 of 5
    # captions picked change between epochs
    assert Counter(t.split(".")[0] for t in seen.elements()) == {f"cap {i}": 40 for i in range(9)}
    assert len(seen) == 45
    # resumable from the group count, like the plain draw
    again = TaskMixSampler(src, {"img": 1.0}, 12, seed=3, per_group={"img": 4})
    expect = [again.batch(k) for k in range(8)]
    first = TaskMixSampler(src, {"img": 1.0}, 12, seed=3, per_group={"img": 4})
    got = [first.batch(k) for k in range(3)]
    second = TaskMixSampler(src, {"img": 1.0}, 12, seed=3, per_group={"img": 4})
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert got + [second.batch(k) for k in range(3, 8)] == expect
    with pytest.raises(ValueError, match="per_group"):
        TaskMixSampler(src, {"img": 1.0}, 12, per_group={"img": 0})


def test_sampler_per_group_fills_batch_across_groups_and_keeps_ungrouped_sources():
    src = {"img": _captioned(20, 3), "txt": _toy_sources()["txt"]}
    s = TaskMixSampler(src, {"img": 1.0, "txt": 1.0}, {"img": 5, "txt": 3}, seed=0, per_group={"img": 2})
    batches = [s.batch(k) for k in range(40)]
    img = [b for name, b in batches if name == "img"]
    assert img and all(len(b) == 5 for b in img)
    # a batch is filled with runs of <= 2 captions of one picture (3 pictures for 5 slots; the
    # last one cut short)
    runs = [len(list(g)) for b in img for _, g in itertools.groupby(x.group for x in b)]
    assert max(runs) == 2 and min(runs) == 1
    plain = TaskMixSampler({"txt": src["txt"]}, {"txt": 1.0}, 3, seed=0)
    txt = [b for name, b in batches if name == "txt"]
    assert txt == [plain._take("txt", 3) for _ in txt]


def test_curriculum_schedule():
    c = VisionCurriculum(start=0.1, end=0.5, ramp_steps=100, hold_steps=20)
    assert c.fraction(0) == c.fraction(19) == pytest.approx(0.1)
    assert c.fraction(70) == pytest.approx(0.3)
    assert c.fraction(120) == c.fraction(10_000) == pytest.approx(0.5)
    assert VisionCurriculum(0.2, 0.6, ramp_steps=0).fraction(0) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        VisionCurriculum(start=1.5)


def test_sampler_follows_curriculum():
    src = _toy_sources()
    cur = VisionCurriculum(start=0.1, end=0.7, ramp_steps=10_000)
    s = TaskMixSampler(src, {"img": 1.0, "txt": 3.0, "txt2": 1.0}, 2, seed=0, curriculum=cur)
    p0, p_end = s.proportions(0), s.proportions(10_000)
    assert p0["img"] == pytest.approx(0.1) and p_end["img"] == pytest.approx(0.7)
    assert p0["txt"] == pytest.approx(0.9 * 0.75) and sum(p_end.values()) == pytest.approx(1.0)
    early = Counter(s.source_at(k) for k in range(0, 1000))  # p(img) 0.10 .. 0.16
    late = Counter(s.source_at(k) for k in range(10_000, 11_000))  # p(img) 0.7
    assert early["img"] < 180 and late["img"] > 620
