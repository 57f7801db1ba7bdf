"""Aspect-ratio batches (Murray & Gordo 2017 §3.2/§3.4): resizing, the batch plan, padding,
the tf.data pipeline on the demo set, bad files, and the padding cost."""
import cv2
import numpy as np
import pandas as pd
import pytest

from ku.data import aspect_batches as ab


@pytest.fixture(scope="module")
def demo():
    from ku.data.demo import load_demo

    return load_demo(split="murray")


@pytest.mark.parametrize("hw, s, expected", [
    ((300, 400), 500, (500, 667)), ((400, 300), 500, (667, 500)), ((500, 500), 224, (224, 224)),
    ((1000, 1500), 500, (500, 750)), ((201, 800), 100, (100, 398)), ((3, 1000), 2, (2, 667)),
])
def test_resized_size(hw, s, expected):
    assert ab.resized_size(*hw, shorter_side=s) == expected


def test_resized_size_max_side_and_errors():
    assert ab.resized_size(300, 1200, 500, max_side=1000) == (250, 1000)
    assert ab.resized_size(300, 400, None) == (300, 400)
    with pytest.raises(ValueError):
        ab.resized_size(0, 10)


def random_sizes(n, seed):
    rng = np.random.default_rng(seed)
    short = rng.integers(200, 400, n)
    aspect = rng.choice([1, 4 / 3, 3 / 2, 16 / 9], n)
    land = rng.random(n) < 0.7
    long = np.round(short * aspect).astype(int)
    return np.stack([np.where(land, short, long), np.where(land, long, short)], 1)


def test_plan_eval_is_sorted_and_complete():
    sizes = random_sizes(53, 0)
    plan = ab.plan_batches(sizes, 8)
    assert [len(b) for b in plan] == [8] * 6 + [5]
    order = np.concatenate(plan)
    assert sorted(order.tolist()) == list(range(53))
    # reference: Python's sort on (nearest aspect bin of width 0.1, area, index)
    key = [(int(np.floor(np.log(w / h) / 0.1 + 0.5)), h * w, i) for i, (h, w) in enumerate(sizes)]
    assert order.tolist() == [k[2] for k in sorted(key)]
    assert all((a == b).all() for a, b in zip(plan, ab.plan_batches(sizes, 8)))
    # aspect_step=None: the exact aspect order
    order = np.concatenate(ab.plan_batches(sizes, 8, aspect_step=None))
    assert (np.diff(np.log(sizes[order, 1] / sizes[order, 0])) >= 0).all()
    with pytest.raises(ValueError, match="aspect_step"):
        ab.plan_batches(sizes, 8, aspect_step=0)
    with pytest.raises(ValueError, match="bucket_batches"):
        ab.plan_batches(sizes, 8, shuffle=True, bucket_batches=0)


def test_plan_shuffle_seeded_per_epoch():
    sizes = random_sizes(100, 1)
    a = ab.plan_batches(sizes, 8, shuffle=True, seed=3, epoch=0)
    b = ab.plan_batches(sizes, 8, shuffle=True, seed=3, epoch=0)
    c = ab.plan_batches(sizes, 8, shuffle=True, seed=3, epoch=1)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    for plan in (a, c):
        assert sorted(np.concatenate(plan).tolist()) == list(range(100))
        assert len(plan[-1]) == 4 and all(len(p) == 8 for p in plan[:-1])
    d = ab.plan_batches(sizes, 8, shuffle=True, drop_remainder=True)
    assert len(d) == 12 and all(len(p) == 8 for p in d)
    # shuffled batches still group similar aspect ratios: far less padding than random batches
    perm = np.random.default_rng(0).permutation(100)
    rand = [perm[i:i + 8] for i in range(0, 100, 8)]
    assert ab.padding_ratio(sizes, a) < ab.padding_ratio(sizes, rand)


def test_padding_ratio_brute_force():
    sizes = np.array([[10, 20], [12, 18], [30, 5]])
    batches = [np.array([0, 1]), np.array([2])]
    canvas = 2 * 12 * 20 + 30 * 5
    image = 10 * 20 + 12 * 18 + 30 * 5
    assert np.isclose(ab.padding_ratio(sizes, batches), canvas / image)


def test_pipeline_on_demo(demo):
    ids = demo[demo.set == "test"].head(12)
    res = ab.aspect_batches(ids, 5, shorter_side=96, targets="distributions")
    assert res.steps_per_epoch == 3 and not res.failed
    from ku.data.readers import distributions

    dist = distributions(res.ids)
    seen = []
    for (images, sizes), y in res.dataset:
        images, sizes, y = images.numpy(), sizes.numpy(), y.numpy()
        assert images.shape[1:3] == tuple(sizes.max(0))  # padded to the batch's max h / w
        assert images.dtype == np.float32
        for k in range(len(sizes)):
            row = res.order[len(seen)]
            seen.append(row)
            h, w = sizes[k]
            assert min(h, w) == 96
            np.testing.assert_array_equal(sizes[k], res.sizes[row])
            assert (images[k, h:] == 0).all() and (images[k, :, w:] == 0).all()
            np.testing.assert_allclose(y[k], dist[row], rtol=1e-6)
            alone = ab.load_image(res.ids.image_path[row], shorter_side=96)
            np.testing.assert_array_equal(images[k, :h, :w], alone)
            # against an OpenCV reference resize of the decoded file (different filters: loose)
            ref = cv2.cvtColor(cv2.imread(res.ids.image_path[row]), cv2.COLOR_BGR2RGB)
            ref = cv2.resize(ref, (int(w), int(h)), interpolation=cv2.INTER_AREA).astype(np.float32)
            assert np.abs(images[k, :h, :w] - ref).mean() < 4.0
    assert sorted(seen) == list(range(12))
    assert 1.0 <= res.padding_ratio < 1.5


def test_pipeline_epochs_keep_batches_aligned(demo):
    ids = demo[demo.set == "training"].head(11)
    res = ab.aspect_batches(ids, 4, shorter_side=48, shuffle=True, seed=5, epochs=2)
    assert res.steps_per_epoch == 3 and len(res.batches) == 6
    got = [sizes.numpy() for _, sizes in res.dataset]  # no targets: (images, sizes)
    assert len(got) == 6
    for sizes, plan in zip(got, res.batches):
        np.testing.assert_array_equal(sizes, res.sizes[plan])


def test_bad_files_skipped_and_reported(demo, tmp_path):
    ids = demo.head(4).copy().reset_index(drop=True)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    extra = pd.DataFrame({"image_id": ["bad1", "bad2"], "image_path": [str(bad), str(empty)]})
    table = pd.concat([ids[["image_id", "image_path"]], extra], ignore_index=True)
    res = ab.aspect_batches(table, 8, shorter_side=32)
    assert {f[0] for f in res.failed} == {"bad1", "bad2"}
    assert len(res.ids) == 4
    n = sum(int(x[0].shape[0]) for x in res.dataset)
    assert n == 4


def _co_batched_again(plan_a, plan_b, n):
    """Share of the image pairs batched together in ``plan_a`` that meet again in ``plan_b``."""
    label = np.empty(n, int)
    for i, b in enumerate(plan_b):
        label[b] = i
    again = total = 0
    for b in plan_a:
        counts = np.unique(label[b], return_counts=True)[1]
        again += int((counts * (counts - 1)).sum())
        total += len(b) * (len(b) - 1)
    return again / total


def test_buckets_meet_the_goal_on_simulated_ava():
    """The goal: <= 1.3x padded / image pixels at batch 128 (training and evaluation
    plans) on AVA's size distribution, against ~2x for the fixed 800 x 800 canvas."""
    sizes = ab.simulate_ava_sizes(20000, seed=0)
    n = len(sizes)
    evals = ab.plan_batches(sizes, 128)
    assert ab.padding_ratio(sizes, evals) <= 1.1
    plans = [ab.plan_batches(sizes, 128, shuffle=True, seed=7, epoch=e) for e in range(4)]
    ratios = [ab.padding_ratio(sizes, p) for p in plans]
    print(f"\nsimulated AVA, batch 128: eval {ab.padding_ratio(sizes, evals):.3f}, "
          f"training epochs 0-3 {np.round(ratios, 3).tolist()}")
    assert max(ratios) <= 1.3
    for plan in plans:  # every image exactly once per epoch, full batches but the last
        order = np.concatenate(plan)
        assert len(order) == n and np.array_equal(np.sort(order), np.arange(n))
        assert all(len(b) == 128 for b in plan[:-1]) and len(plan[-1]) == n % 128
    again = ab.plan_batches(sizes, 128, shuffle=True, seed=7, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(again, plans[1]))  # deterministic by seed
    other = ab.plan_batches(sizes, 128, shuffle=True, seed=8, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(other, plans[1]))
    # different across epochs: different batches, and most pairs of images do not meet again
    assert not any(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(plans[0], plans[1]))
    assert _co_batched_again(plans[0], plans[1], n) < 0.3
    # the fixed canvas of Jia et al. (images at their original size): about 2x
    fixed = n * 800 * 800 / (sizes[:, 0] * sizes[:, 1]).astype(float).sum()
    assert 1.7 < fixed < 2.2
    # what the buckets fix: ordering by the exact aspect alone interleaves the sizes -> > 1.3
    exact = ab.plan_batches(sizes, 128, shuffle=True, seed=7, aspect_step=None)
    assert ab.padding_ratio(sizes, exact) > 1.3


def test_padding_report_demo_and_simulated_ava(demo):
    rep = ab.demo_padding_report(batch_size=16, shorter_side=500)
    print(f"\ndemo set, batch 16, shorter side 500: {rep}")
    assert rep["n_images"] == len(demo)
    assert rep["eval_ratio"] < 1.3 and rep["train_ratio_max"] < 1.3 and rep["random_ratio"] > 1.5
    assert rep["max_canvas_ratio"] > 2 and rep["fixed_ratio"] > 4
    sizes = ab.simulate_ava_sizes(20000, seed=0)
    mean_h, mean_w = sizes.mean(0)
    assert abs(mean_w - 629) < 15 and abs(mean_h - 497) < 20 and sizes.max() == 800
    for batch in (16, 128):
        rep = ab.padding_report(sizes, batch, shorter_side=None, fixed_canvas=(800, 800))
        print(f"simulated AVA (original sizes), batch {batch}: {rep}")
        assert rep["eval_ratio"] <= 1.3 and rep["train_ratio_max"] <= 1.3
        assert 1.7 < rep["fixed_ratio"] < 2.2
        assert rep["max_canvas_ratio"] == pytest.approx(rep["fixed_ratio"])  # longest side 800


def test_fixed_canvas_pipeline(demo):
    """``canvas=``: the same images and sizes, every batch padded to one fixed canvas."""
    ids = demo[demo.set == "test"].head(7)
    bucketed = ab.aspect_batches(ids, 3, shorter_side=40)
    fixed = ab.aspect_batches(ids, 3, shorter_side=40, canvas="max")
    side = int(bucketed.sizes.max())
    assert fixed.padding_ratio > bucketed.padding_ratio >= 1.0
    assert fixed.padding_ratio == pytest.approx(7 * side * side / bucketed.sizes.prod(1).sum())
    for (xa, sa), (xb, sb) in zip(bucketed.dataset, fixed.dataset):
        assert xb.shape[1:3] == (side, side)
        assert tuple(xa.shape[1:3]) == tuple(np.asarray(sa).max(0))
        np.testing.assert_array_equal(sa, sb)
        xa, xb = xa.numpy(), xb.numpy()
        np.testing.assert_array_equal(xb[:, :xa.shape[1], :xa.shape[2]], xa)
        assert (xb[:, xa.shape[1]:] == 0).all() and (xb[:, :, xa.shape[2]:] == 0).all()
    with pytest.raises(ValueError, match="do not fit"):
        ab.aspect_batches(ids, 3, shorter_side=40, canvas=(side - 1, side))
    with pytest.raises(ValueError, match="canvas"):
        ab.aspect_batches(ids, 3, shorter_side=40, canvas="big")


def test_fixed_canvas_batches_numpy():
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for h, w in [(5, 7), (6, 3)]]
    batch, sizes = ab.fixed_canvas_batches(images)
    assert batch.shape == (2, 6, 7, 3) and sizes.tolist() == [[5, 7], [6, 3]]
    np.testing.assert_array_equal(batch[1, :, :3], images[1])
    assert (batch[0, 5:] == 0).all() and (batch[1, :, 3:] == 0).all()
    batch, _ = ab.fixed_canvas_batches(images, 8)
    assert batch.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(batch[0, :5, :7], images[0])
    with pytest.raises(ValueError, match="do not fit"):
        ab.fixed_canvas_batches(images, (6, 6))


def test_worker_slices_make_up_the_global_batch(demo):
    """input_context (tf.distribute): each pipeline yields its replicas' slices of every planned
    batch, padded to the whole batch's canvas; together they are exactly the single-process batch
    (same images, padding, targets); a last batch smaller than the replica count is dropped."""
    import tensorflow as tf

    ids = demo[demo.set == "training"].head(13)
    kw = dict(shorter_side=48, targets="distributions", shuffle=True, seed=2, epochs=2)
    whole = ab.aspect_batches(ids, 4, **kw)
    assert [len(b) for b in whole.batches] == [4, 4, 4, 1] * 2
    whole_batches = list(whole.dataset.as_numpy_iterator())
    n_rep = 3
    for n_pipe in (1, 3):  # one pipeline feeding 3 replicas (MirroredStrategy) or 3 workers
        pipes = []
        for p in range(n_pipe):
            ctx = tf.distribute.InputContext(num_input_pipelines=n_pipe, input_pipeline_id=p,
                                             num_replicas_in_sync=n_rep)
            res = ab.aspect_batches(ids, 4, input_context=ctx, **kw)
            assert res.steps_per_epoch == 3  # the batch of 1 image is dropped on every pipeline
            pipes.append(list(res.dataset.as_numpy_iterator()))
        per_step = n_rep // n_pipe
        assert all(len(p) == 6 * per_step for p in pipes)
        kept = [b for b in range(8) if len(whole.batches[b]) >= n_rep]
        for step, b in enumerate(kept):
            (x, s), y = whole_batches[b]
            slices = [p[step * per_step + j] for p in pipes for j in range(per_step)]
            assert [len(sl[1]) for sl in slices] == [len(part) for part in np.array_split(np.arange(len(y)), n_rep)]
            for (xs, ss), ys in slices:
                assert xs.shape[1:3] == x.shape[1:3]  # the global batch's canvas
            np.testing.assert_array_equal(np.concatenate([sl[0][0] for sl in slices]), x)
            np.testing.assert_array_equal(np.concatenate([sl[0][1] for sl in slices]), s)
            np.testing.assert_array_equal(np.concatenate([sl[1] for sl in slices]), y)
    # first_epoch: a resumed run continues with the uninterrupted run's plan
    later = ab.aspect_batches(ids, 4, **{**kw, "epochs": 1}, first_epoch=1)
    for a, b in zip(later.batches, whole.batches[4:]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="do not divide"):
        ab.aspect_batches(ids, 4, input_context=tf.distribute.InputContext(2, 0, 3), **kw)
