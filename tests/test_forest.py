"""The fast walker must give exactly sklearn's predict_proba: same bits, every row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from service.engine._walker import Walker
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from model import synthetic
from service.engine import forest
from tests.helpers import a_row_that_empties_itself, examples, rows_on_thresholds, sklearn_arrays

pytestmark = pytest.mark.native  # the sanitizer run of `make test` repeats these

N_ROWS = examples(10_000)


@pytest.fixture(scope="module")
def training_data():
    X, y = synthetic.generate(8000, seed=5)
    Xf, yf = synthetic.generate(200_000, seed=6)
    return np.vstack([X, Xf[yf == 1]]), np.concatenate([y, yf[yf == 1]])


@pytest.mark.parametrize(
    "make_estimator",
    [
        lambda: RandomForestClassifier(n_estimators=40, random_state=1),
        lambda: ExtraTreesClassifier(n_estimators=30, random_state=2),
        lambda: DecisionTreeClassifier(random_state=3),
        lambda: RandomForestClassifier(n_estimators=10, max_depth=4, random_state=4),
        lambda: RandomForestClassifier(n_estimators=20, max_leaf_nodes=40, random_state=5),
    ],
    ids=["random-forest", "extra-trees", "decision-tree", "shallow-forest", "best-first-forest"],
)
def test_bit_identical_to_predict_proba(make_estimator, training_data):
    X, y = training_data
    estimator = make_estimator().fit(X, y)
    scorer = forest.Forest(forest.flatten(estimator))
    arrays = sklearn_arrays(estimator)
    # sklearn's depth-first builder puts each left child right after its parent, the best-first one
    # (max_leaf_nodes) does not: the walker has a loop for each layout, and both are checked here.
    depth_first = getattr(estimator, "max_leaf_nodes", None) is None
    assert scorer._walker.left_is_next is depth_first
    # Batches take QuickScorer's route (bytes with AVX-512BW or AVX2; words on request) where the
    # CPU has it, else the walk: every route this CPU runs is checked, on a row count that leaves a
    # remainder of a block.
    assert scorer._walker.lanes == next(iter(cpu_routes()))
    routes = [with_lanes(scorer, lanes) for lanes in cpu_routes()]
    rng = np.random.default_rng(0)
    X_test, _ = synthetic.generate(N_ROWS + 7, seed=99)
    on_thresholds = rows_on_thresholds(arrays, X, rng, N_ROWS)
    for rows in (X_test, on_thresholds):
        expected = estimator.predict_proba(rows)[:, 1]
        assert np.array_equal(scorer.predict_rows(rows), expected)
        for route in routes:
            assert np.array_equal(predict_rows(route, rows), expected), route.lanes
        single = np.array([scorer.predict_row(list(map(float, r))) for r in rows])
        assert np.array_equal(single, expected)
    # The threshold rows must really exercise the cast: without it, some would land elsewhere.
    naive = [
        sum(arrays["value"][naive_leaf(arrays, root, r)] for root in arrays["roots"]) / len(arrays["roots"])
        for r in on_thresholds[:2000]
    ]
    assert not np.array_equal(naive, estimator.predict_proba(on_thresholds[:2000])[:, 1])


def cpu_routes() -> list[int]:
    """The batch routes (rows a block) this CPU runs, fastest first: 64 (bytes) with AVX-512BW, 32
    (bytes) with AVX2, 16 (words) with AVX-512, 8 (words) with AVX2; 0 (the walk) everywhere."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(next((line.split() for line in lines if line.startswith("flags")), []))
    needs = {64: {"avx512f", "avx512bw"}, 32: {"avx2"}, 16: {"avx512f"}, 8: {"avx2"}, 0: set()}
    return [lanes for lanes in forest.ROUTES if needs[lanes] <= flags]


BYTE_ROUTES = [lanes for lanes in (64, 32) if lanes in cpu_routes()]


def with_lanes(scorer: forest.Forest, lanes: int) -> Walker:
    """The same arrays, batches scored by the given route (0: the walk)."""
    arrays = scorer.arrays
    return Walker(
        nodes=arrays["nodes"],
        value=arrays["value"],
        roots=arrays["roots"],
        n_features=scorer.n_features,
        lanes=lanes,
    )


def predict_rows(walker: Walker, rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows))
    walker.predict_rows(np.ascontiguousarray(rows, dtype=np.float32), out)
    return out


def test_every_batch_route_agrees_on_every_row_count_and_on_nan(training_data):
    """NaN goes right on every route (!(x <= t)), as in the walk of one row; blocks and their
    remainders, and batches too small for a block, give the same bits."""
    X, y = training_data
    scorer = forest.Forest(forest.flatten(RandomForestClassifier(n_estimators=25, random_state=7).fit(X, y)))
    walked = with_lanes(scorer, 0)
    routes = [with_lanes(scorer, lanes) for lanes in cpu_routes() if lanes]
    rows, _ = synthetic.generate(3000, seed=12)
    rng = np.random.default_rng(1)
    with_nan = rows.copy()
    with_nan[rng.integers(0, len(rows), 600), rng.integers(0, rows.shape[1], 600)] = np.nan
    for batch in (rows, with_nan):
        for n in (0, 1, 7, 8, 9, 11, 12, 13, 15, 16, 17, 31, 32, 33, 51, 63, 64, 65, 127, 129, 1000, 3000):
            expected = predict_rows(walked, batch[:n])
            assert np.array_equal(expected, [scorer.predict_row(r) for r in batch[:n].tolist()])
            for route in routes:
                assert np.array_equal(predict_rows(route, batch[:n]), expected), (route.lanes, n)


@pytest.mark.parametrize("lanes", BYTE_ROUTES or [pytest.param(0, marks=pytest.mark.skip("needs AVX2"))])
def test_the_byte_kernel_on_trees_in_several_groups_and_of_many_leaves(training_data, lanes):
    """The byte kernels score the trees in groups whose state fits the cache, and find the exit
    leaf of a tree of more than 256 leaves (more than a byte can number) without vectors."""
    X, y = training_data
    estimator = ExtraTreesClassifier(n_estimators=60, random_state=8).fit(X, y)
    scorer = forest.Forest(forest.flatten(estimator))
    walker = with_lanes(scorer, lanes)
    assert walker.groups > 1
    assert max(tree.tree_.n_leaves for tree in estimator.estimators_) > 256
    rows, _ = synthetic.generate(5000, seed=13)
    assert np.array_equal(predict_rows(walker, rows), estimator.predict_proba(rows)[:, 1])


def test_a_tree_too_large_for_the_tables_is_walked(training_data):
    """A fully grown tree on millions of rows can have more leaves than QuickScorer's tables number
    (16,320 a tree with words, 65,280 with bytes): such a model still loads, its batches walked,
    unless a route is asked for by name."""
    leaves = 70_000
    nodes = np.zeros(2 * leaves - 1, dtype=forest.NODE)
    inner = np.arange(leaves - 1) * 2  # a comb: each inner node's left child is a leaf
    nodes["feature"] = -1
    nodes["feature"][inner] = 0
    nodes["threshold"][inner] = inner.astype(np.float32)
    nodes["left"], nodes["right"] = -1, -1
    nodes["left"][inner], nodes["right"][inner] = inner + 1, inner + 2
    value = np.random.default_rng(0).random(len(nodes))
    arrays = {"nodes": nodes, "value": value, "roots": np.zeros(1, dtype=np.int32), "n_features": 1}
    walker = Walker(**arrays)
    assert walker.lanes == 0
    for lanes in cpu_routes():
        if lanes:
            with pytest.raises(ValueError, match="leaves"):
                Walker(**arrays, lanes=lanes)
    rows = np.random.default_rng(1).uniform(-5, 2 * leaves, size=(300, 1))
    assert np.array_equal(predict_rows(walker, rows), [walker.predict_row(row) for row in rows.tolist()])
    assert predict_rows(walker, np.array([[2.0 * leaves]]))[0] == value[-1]  # right at every node


def test_a_route_the_cpu_cannot_run_is_refused(training_data):
    X, y = training_data
    scorer = forest.Forest(forest.flatten(DecisionTreeClassifier(max_depth=3, random_state=1).fit(X, y)))
    with pytest.raises(ValueError, match="lanes=4"):
        with_lanes(scorer, 4)


def naive_leaf(arrays: dict, node: int, row: np.ndarray) -> int:
    """The walk done in float64, without sklearn's float32 cast."""
    while arrays["left"][node] >= 0:
        go_left = row[arrays["feature"][node]] <= arrays["threshold"][node]
        node = arrays["left"][node] if go_left else arrays["right"][node]
    return node


def test_memory_mapped_round_trip(tmp_path, training_data):
    X, y = training_data
    estimator = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    path = tmp_path / "forest.joblib"
    forest.save(forest.flatten(estimator), path)
    loaded = forest.Forest.load(path)
    assert isinstance(loaded.arrays["nodes"], np.memmap)
    assert not loaded.arrays["nodes"].flags.writeable
    assert np.array_equal(loaded.predict_rows(X[:500]), estimator.predict_proba(X[:500])[:, 1])


def test_rejects_what_it_cannot_serve(training_data):
    X, y = training_data
    with pytest.raises(forest.UnsupportedEstimator):
        forest.flatten(RandomForestClassifier(n_estimators=2).fit(X, np.arange(len(y)) % 3))
    from sklearn.dummy import DummyClassifier

    with pytest.raises(forest.UnsupportedEstimator):
        forest.flatten(DummyClassifier().fit(X, y))


def test_corrupt_arrays_are_refused_not_walked(training_data):
    X, y = training_data
    arrays = forest.flatten(DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y))
    for field, index, value in (("left", 0, 10**6), ("feature", 0, 31), ("left", 0, 0), ("right", 0, -5)):
        bad = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in arrays.items()}
        bad["nodes"][field][index] = value
        with pytest.raises(ValueError):
            forest.Forest(bad)
    with pytest.raises(ValueError):
        forest.Forest(arrays | {"roots": np.array([len(arrays["value"])], dtype=np.int32)})


def test_arrays_that_break_the_forests_structure_are_refused_with_what_is_wrong(training_data):
    """The walk and the batch tables take the structure for granted (no bounds checks there), so the
    walker checks it once, even though a served artifact's digest is checked too: each break below
    is refused with what is wrong."""
    X, y = training_data
    arrays = forest.flatten(RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(X, y))
    nodes, roots = arrays["nodes"], arrays["roots"]
    n = len(nodes)
    splits = np.flatnonzero(nodes["feature"][: roots[1]] >= 0)
    inner = next(int(i) for i in splits if nodes["feature"][nodes["left"][i]] >= 0)  # a split whose left child splits

    def broken(roots=roots, **fields):
        copy = nodes.copy()
        for field, (index, value) in fields.items():
            copy[field][index] = value
        return arrays | {"nodes": copy, "roots": np.asarray(roots, dtype=np.int32)}

    cases = {
        "roots are not increasing": broken(roots=[0, roots[2], roots[1]]),
        "does not start at node 0": broken(roots=[1, roots[1], roots[2]]),
        "root is out of range": broken(roots=[0, roots[1], n]),
        "no trees": broken(roots=[]),
        "outside its tree": broken(right=(int(splits[-1]), int(roots[1]))),  # into the second tree
        "before its parent": broken(left=(int(splits[-1]), int(splits[-1]))),
        "two parents": broken(right=(0, int(nodes["left"][0]))),
        "not reached": broken(feature=(int(nodes["left"][inner]), -2)),  # its children lose their parent
        "feature is out of range": broken(feature=(0, 30)),
        "threshold is NaN": broken(threshold=(0, np.nan)),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            forest.Forest(bad)
    assert forest.Forest(broken()).predict_rows(X[:10]).shape == (10,)  # the untouched arrays load


def test_a_deep_tree_whose_left_subtrees_span_many_words_gets_a_table_entry_for_each(training_data):
    """A comb whose left child splits again at every level: the nodes near the root rule out leaves
    in dozens of 64-leaf words each, far more table entries than two a node."""
    leaves = 3000
    nodes = np.zeros(2 * leaves - 1, dtype=forest.NODE)
    inner = np.arange(leaves - 1) * 2  # inner node i: its left child i + 2 splits again, its right i + 1 is a leaf
    nodes["feature"] = -1
    nodes["feature"][inner] = 0
    nodes["threshold"][inner] = (leaves - inner).astype(np.float32)
    nodes["left"], nodes["right"] = -1, -1
    nodes["left"][inner], nodes["right"][inner] = inner + 2, inner + 1
    value = np.random.default_rng(0).random(len(nodes))
    arrays = {"nodes": nodes, "value": value, "roots": np.zeros(1, dtype=np.int32), "n_features": 1}
    walked = Walker(**arrays, lanes=0)
    rows = np.random.default_rng(1).uniform(-5, leaves + 5, size=(500, 1))
    expected = predict_rows(walked, rows)
    for lanes in cpu_routes():
        assert np.array_equal(predict_rows(Walker(**arrays, lanes=lanes), rows), expected), lanes


def test_an_artifact_in_the_old_format_is_recognised(training_data):
    X, y = training_data
    arrays = forest.flatten(DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y))
    old = {k: v for k, v in arrays.items() if k not in ("nodes", "format")}
    with pytest.raises(forest.OutdatedArtifact):
        forest.Forest(old)


def test_thresholds_rounded_down_to_float32_take_the_same_branch():
    rng = np.random.default_rng(1)
    t64 = np.concatenate(
        [
            rng.normal(0, 100, 5000),
            rng.normal(0, 1e-3, 5000),
            np.float32(rng.normal(0, 10, 2000)).astype(np.float64),
            [3.5e38, -3.5e38, 0.0],
        ]
    )
    t32 = forest.threshold_down(t64)
    assert np.all(t32.astype(np.float64) <= t64)
    with np.errstate(over="ignore"):  # ±3.5e38 is beyond float32: it becomes ±inf, as in sklearn
        nearest = np.float32(t64)
        for x in (nearest, np.nextafter(nearest, np.float32(np.inf)), np.nextafter(nearest, np.float32(-np.inf))):
            assert np.array_equal(x <= t32, x.astype(np.float64) <= t64)


def test_wrong_row_length_is_an_error(training_data):
    X, y = training_data
    scorer = forest.Forest(forest.flatten(DecisionTreeClassifier(max_depth=2).fit(X, y)))
    with pytest.raises(ValueError):
        scorer.predict_row([0.0] * 29)
    with pytest.raises(ValueError):
        scorer.predict_rows(np.zeros((3, 29)))


def test_a_row_changed_while_it_is_read_is_an_error(training_data):
    X, y = training_data
    scorer = forest.Forest(forest.flatten(DecisionTreeClassifier(max_depth=2).fit(X, y)))
    with pytest.raises(RuntimeError, match="changed"):
        scorer.predict_row(a_row_that_empties_itself(X.shape[1]))
    with pytest.raises(RuntimeError, match="changed"):
        scorer._walker.explain_row(a_row_that_empties_itself(X.shape[1]), np.empty(X.shape[1]))


def test_path_decomposition_adds_up_to_the_probability(training_data):
    X, y = training_data
    estimator = RandomForestClassifier(n_estimators=30, random_state=7).fit(X, y)
    scorer = forest.Forest(forest.flatten(estimator))
    X_test, _ = synthetic.generate(3000, seed=12)
    rows = np.vstack([X_test, X[y == 1][:500]])
    expected = estimator.predict_proba(rows)[:, 1]
    root_mean = np.mean([t.tree_.value[0, 0, 1] for t in estimator.estimators_])
    worst = 0.0
    for row, p in zip(rows, expected, strict=True):
        probability, bias, contributions = scorer.explain_row(list(map(float, row)))
        assert probability == p  # the same walk, the same bits as predict_proba
        assert bias == pytest.approx(root_mean, abs=1e-15)
        worst = max(worst, abs(bias + contributions.sum() - probability))
    assert worst < 1e-12
    assert (expected > 0.5).sum() > 10  # the identity was checked on fraud-like rows too
