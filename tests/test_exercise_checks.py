"""The self-checks of notebooks 01-07: every correct form passes, a wrong answer fails (False, or
ExerciseError in strict mode) without printing the expected answer, each check's own route to
the answer agrees with the package's, and a wrong answer gets a hint that says what is wrong
with it (its type, shape, length, or value and how far off)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from puretools.circuits import circuit_attributions
from puretools.evaluate import cluster_distances, distance_correlation
from puretools.exercises import (
    ExerciseError,
    diagnose,
    nb01,
    nb02,
    nb03,
    nb04,
    nb05,
    nb05b,
    nb05c,
    nb06,
    nb07,
    nb08,
)
from puretools.patches import crop_box
from puretools.virtual import VirtualNeurons
from puretools.widgets import ExplorerData, explorer_scores


def verdicts(check, answers, capsys, monkeypatch):
    """Run ``check(answer)`` for each answer (not strict); return the verdicts and all output."""
    monkeypatch.delenv("PURETOOLS_EXERCISES", raising=False)
    out = [check(a) for a in answers]
    return out, capsys.readouterr().out


def fails_quietly(check, wrong, secret: str, capsys, monkeypatch):
    """A wrong answer: False with a hint, ExerciseError in strict mode, never the expected value."""
    ok, printed = verdicts(check, [wrong], capsys, monkeypatch)
    assert ok == [False] and "not quite" in printed and secret not in printed
    monkeypatch.setenv("PURETOOLS_EXERCISES", "strict")
    with pytest.raises(ExerciseError) as err:
        check(wrong)
    assert secret not in str(err.value)
    monkeypatch.setenv("PURETOOLS_EXERCISES", "strict")
    with pytest.raises(ExerciseError, match="not attempted"):
        check(...)


# --- notebook 01 ---------------------------------------------------------------------------

def test_nb01_top_neuron_every_form_and_ties(capsys, monkeypatch):
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1]])
    refs = torch.tensor([[0, 2], [0, 1], [2, 2], [3, 0]])  # concept 0: shares 1/2, 1, 0, 1
    check = lambda a: nb01.check_top_neuron(a, labels, refs, concept=0)
    ok, _ = verdicts(check, [1, 3, torch.tensor(1), np.int64(3)], capsys, monkeypatch)
    assert ok == [True] * 4  # neurons 1 and 3 tie
    assert verdicts(check, [True, 1.0], capsys, monkeypatch)[0] == [False, False]  # not a neuron id
    fails_quietly(check, 2, "neuron 1", capsys, monkeypatch)


def test_nb01_top_references_agree_with_collect_references(capsys, monkeypatch):
    from puretools.references import collect_references

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    images = torch.randn(30, 3, 8, 8)
    data = torch.utils.data.TensorDataset(images, torch.zeros(30))
    refs = collect_references(model, data, "2", n_ref=5)
    check = lambda a: nb01.check_top_references(a, model, images, "2", neuron=1, n=5, batch_size=7)
    top = refs.indices[1]
    ok, _ = verdicts(check, [top, top.tolist(), top.numpy()], capsys, monkeypatch)
    assert ok == [True] * 3
    fails_quietly(check, top.flip(0), str(top.tolist()), capsys, monkeypatch)  # order matters


# --- notebook 02 ---------------------------------------------------------------------------

def test_nb02_circuit_by_hand_against_the_engine(capsys, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1), nn.ReLU()).eval()
    data = torch.utils.data.TensorDataset(torch.randn(6, 3, 6, 6), torch.zeros(6))
    refs = torch.tensor([[0, 1], [2, 3], [4, 5], [1, 0]])
    circuits = circuit_attributions(model, data, "3", "1", refs)  # [4, 2, 5]
    # by hand: relu(a_k) on channel k at the layer, gradient x activation at the lower layer
    low = model[:2](data.tensors[0][refs[2, 1]][None]).detach().requires_grad_(True)
    out = model[2:](low)
    g = torch.zeros_like(out)
    g[:, 2] = out[:, 2].clamp(min=0)
    (grad,) = torch.autograd.grad(out, low, g)
    by_hand = (grad * low).sum((2, 3))[0]
    by_hand = (by_hand / by_hand.abs().sum()).detach()
    check = lambda a: nb02.check_circuit(a, model, data, "3", "1", refs, neuron=2, reference=1)
    ok, _ = verdicts(check, [by_hand, circuits[2, 1], by_hand.tolist(), by_hand.detach().numpy()],
                     capsys, monkeypatch)
    assert ok == [True] * 4
    assert verdicts(check, [by_hand[:-1], circuits[2, 0]], capsys, monkeypatch)[0] == [False, False]
    fails_quietly(check, -by_hand, f"{float(by_hand[0]):.4f}", capsys, monkeypatch)


def test_nb02_top_channel(capsys, monkeypatch):
    circuits = torch.tensor([[0.1, 0.5, -0.9], [0.3, 0.2, -0.8], [0.9, 0.0, 0.0]])
    concepts = torch.tensor([4, 4, 7])
    check = lambda a: nb02.check_top_channel(a, circuits, concepts, concept=4)
    assert verdicts(check, [1, torch.tensor(1), np.int64(1)], capsys, monkeypatch)[0] == [True] * 3
    fails_quietly(check, 2, "channel 1", capsys, monkeypatch)  # |relevance| would pick channel 2


# --- notebook 04 ---------------------------------------------------------------------------

def test_nb04_border_boxes(capsys, monkeypatch):
    heat = torch.zeros(3, 12, 12)
    heat[0, 0, 0] = heat[1, 6, 6] = heat[2, 11, 3] = 1.0  # a corner, the middle, the bottom edge
    check = lambda a: nb04.check_border_boxes(a, heat)
    ok, _ = verdicts(check, [2, np.int64(2), torch.tensor(2)], capsys, monkeypatch)
    assert ok == [True] * 3
    assert verdicts(check, [True, 2.5, "2"], capsys, monkeypatch)[0] == [False] * 3
    fails_quietly(check, 1, "2 boxes", capsys, monkeypatch)


def test_nb04_interior_case_is_decided_by_the_rounding_rule():
    heat = torch.zeros(3, 16, 16)
    heat[0, 0, 2:9] = 1.0  # at the border
    heat[1, 6:8, 4:12] = 1.0  # interior, 2 x 8 (blurred wider): even surplus?
    heat[2, 7, 4:12] = 1.0  # interior, 1 x 8 (blurred wider)
    r = nb04.interior_case(heat, 0.1)
    assert r in (1, 2)
    top, left, size = crop_box(heat[r], threshold=0.1)
    assert 0 < top and 0 < left and top + size < 16 and left + size < 16


def test_nb04_crop_box_by_hand(capsys, monkeypatch):
    heat = torch.zeros(16, 16)
    heat[1:3, 10:15] = 1.0  # near the top border: the square must shift down
    expected = crop_box(heat, threshold=0.1)
    check = lambda a: nb04.check_crop_box(a, heat, 0.1)
    forms = [expected, list(expected), torch.tensor(expected), np.array(expected)]
    assert verdicts(check, forms, capsys, monkeypatch)[0] == [True] * 4
    top, left, size = expected
    fails_quietly(check, (top - 1, left, size), str(expected), capsys, monkeypatch)
    assert verdicts(check, [size, (top, left), "box"], capsys, monkeypatch)[0] == [False] * 3  # malformed


def test_nb04_crop_area(capsys, monkeypatch):
    heat = torch.zeros(4, 10, 10)
    heat[:, 2:4, 2:4] = 1.0
    expected = {t: float(np.mean([crop_box(h, threshold=t)[2] ** 2 / 100 for h in heat])) for t in (0.1, 0.5)}
    check = lambda a: nb04.check_crop_area(a, heat, (0.1, 0.5))
    tensors = {t: torch.tensor(v) for t, v in expected.items()}
    assert verdicts(check, [expected, tensors], capsys, monkeypatch)[0] == [True, True]
    fails_quietly(check, {0.1: 1.0, 0.5: 1.0}, f"{expected[0.1]:.2f}", capsys, monkeypatch)


# --- notebook 05 ---------------------------------------------------------------------------

@pytest.fixture
def neuron():
    g = torch.Generator().manual_seed(3)
    return torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g), torch.randn(20, 6, generator=g)


def test_nb05_intra_inter_agree_with_evaluate(neuron, capsys, monkeypatch):
    x, lab, _ = neuron
    d = cluster_distances(x, lab)
    intra = lambda a: nb05.check_intra(a, x, lab)
    inter = lambda a: nb05.check_inter(a, x, lab)
    assert verdicts(intra, [d.intra, torch.tensor(d.intra), np.float32(d.intra)], capsys, monkeypatch)[0] == [True] * 3
    assert verdicts(inter, [d.inter, torch.tensor(d.inter, dtype=torch.float64)], capsys, monkeypatch)[0] == [True] * 2
    pooled = cluster_distances(x, lab, average="pairs").intra  # the other definition is wrong here
    fails_quietly(intra, pooled, f"{d.intra:.3f}", capsys, monkeypatch)
    assert verdicts(intra, ["0.5", None, [d.intra, d.intra]], capsys, monkeypatch)[0] == [False] * 3
    fails_quietly(inter, d.unclustered, f"{d.inter:.3f}", capsys, monkeypatch)


def test_nb05_distance_correlation_agrees_with_evaluate(neuron, capsys, monkeypatch):
    x, _, y = neuron
    r = distance_correlation(x[None], {"m": y[None]}, n_subsets=1)["m"].mean
    check = lambda a: nb05.check_distance_correlation(a, x, y)
    assert verdicts(check, [r, torch.tensor(r)], capsys, monkeypatch)[0] == [True, True]
    fails_quietly(check, -r, f"{r:.3f}", capsys, monkeypatch)


# --- notebook 06 ---------------------------------------------------------------------------

@pytest.fixture
def explorer_data():
    g = torch.Generator().manual_seed(0)
    concepts = torch.tensor([[1] * 6 + [2] * 6] * 3)  # [3 neurons, 12 references]
    split = torch.cat([torch.zeros(6, 2), torch.full((6, 2), 5.0)])  # separates the concepts
    noise = torch.randn(3, 12, 2, generator=g)
    features = {"PURE": torch.stack([split, noise[0], split + 0.1 * noise[1]]),
                "activations": torch.stack([noise[2], noise[1], noise[0]])}
    return ExplorerData([4, 5, 6], [3.0, 2.0, 1.0], features, {}, {}, concepts=concepts)


def test_nb06_best_gap_and_purity_agree_with_explorer_scores(explorer_data, capsys, monkeypatch):
    gaps = [explorer_scores(explorer_data, p, 2, "PURE")["ari"] - explorer_scores(explorer_data, p, 2, "activations")["ari"]
            for p in range(3)]
    best = int(np.argmax(gaps))
    gap = lambda a: nb06.check_best_gap(a, explorer_data)
    assert verdicts(gap, [best, torch.tensor(best)], capsys, monkeypatch)[0] == [True, True]
    wrong = explorer_data.neurons[best]  # the neuron id instead of its position
    fails_quietly(gap, wrong, f"position {best}", capsys, monkeypatch)
    purity = explorer_scores(explorer_data, 1, 2, "PURE")["purity"]
    check = lambda a: nb06.check_purity(a, explorer_data, 1, 2, "PURE")
    assert verdicts(check, [purity, torch.tensor(purity)], capsys, monkeypatch)[0] == [True, True]
    fails_quietly(check, 0.1234, f"{purity:.2f}", capsys, monkeypatch)


# --- notebook 07 ---------------------------------------------------------------------------

def test_nb07_sizes_and_agreement(capsys, monkeypatch):
    g = torch.Generator().manual_seed(1)
    circuits = torch.cat([torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 4])
    vn = VirtualNeurons(seed=0).fit(circuits, k=2)
    sizes = lambda a: nb07.check_cluster_sizes(a, vn.labels[0])
    counts = torch.bincount(vn.labels[0])
    assert verdicts(sizes, [counts, counts.tolist()], capsys, monkeypatch)[0] == [True, True]
    fails_quietly(sizes, counts.flip(0), str(counts.tolist()), capsys, monkeypatch)
    from sklearn.metrics import adjusted_rand_score

    pure = torch.randint(0, 2, (3, 12), generator=g)
    base = torch.randint(0, 3, (3, 12), generator=g)
    base[1] = 1 - pure[1]  # the same split under other cluster numbers: ARI 1
    ari = [adjusted_rand_score(p, b) for p, b in zip(pure, base)]
    check = lambda a: nb07.check_agreement(a, pure, base)
    assert verdicts(check, [ari, torch.tensor(ari), np.array(ari)], capsys, monkeypatch)[0] == [True] * 3
    fails_quietly(check, [a + 0.2 for a in ari], f"{ari[0]:.3f}", capsys, monkeypatch)
    assert verdicts(check, [pure[0], None, ari[:-1]], capsys, monkeypatch)[0] == [False] * 3  # vn.labels[0] is not it


# --- hints that say what is wrong -----------------------------------------------------------

def message(check, wrong, capsys, monkeypatch) -> str:
    ok, printed = verdicts(check, [wrong], capsys, monkeypatch)
    assert ok == [False], printed
    return printed


@pytest.mark.parametrize(("answer", "expected", "categorical", "says"), [
    (True, 3, False, "expected a whole number (an int), got a bool"),
    (2.5, 3, False, "expected a whole number (an int), got a float"),
    ([1, 2], 3, False, "expected a whole number (int), got a list of 2 items"),
    (5, 3, False, "off by 2"),
    (5, 3, True, "not the right one"),
    (0.6, 0.5, False, "off by about 20 % of the expected value"),
    ([1, 2, 3], [1, 2, 3, 4], False, "expected 4 items, got 3"),
    (torch.zeros(50, 1), torch.zeros(50), False, "expected shape (50,), got a tensor of shape (50, 1)"),
    ([3, 2, 1], [1, 2, 3], False, "2 of 3 entries are wrong (the right values in the wrong order)"),
    (torch.tensor([0.0, 1.5]), torch.tensor([0.0, 1.0]), False, "1 of 2 entries are wrong (largest difference 0.5)"),
    ({0.1: 1.0}, {0.1: 1.0, 0.3: 0.5}, False, "missing [0.3]"),
    ({"a": 1.0}, {"a": 2.0}, False, "wrong value for 'a' (right type, wrong value: off by 1)"),
    (["ring", "disc"], ["ring", "star"], False, "1 of 2 items are wrong"),
    ("3", 3, False, "expected a whole number (int), got a string"),
])
def test_diagnose_names_type_shape_length_or_value(answer, expected, categorical, says):
    assert says in diagnose(answer, expected, categorical=categorical)


def test_a_type_error_gets_no_method_hint(capsys, monkeypatch):
    labels = torch.tensor([[1, 0], [0, 1]])
    check = lambda a: nb01.check_top_neuron(a, labels, torch.tensor([[0, 0], [1, 1]]), concept=0)
    printed = message(check, 0.0, capsys, monkeypatch)
    assert "got a float" in printed and "argmax" not in printed  # the method is fine, the type is not
    assert "argmax" in message(check, 1, capsys, monkeypatch)  # a wrong neuron: the method hint helps


def _toy():
    import puretools as pt
    from puretools import toyworld

    model, data = pt.load_model("toy"), toyworld.ToyWorld("test", n=300)
    return model, data, pt.collect_references(model, data, "layer4", n_ref=10, progress=False)


def _cases():
    """(name, check, a wrong answer, what its hint must say) for every exercise of the tutorial."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    model2 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    images = torch.randn(20, 3, 8, 8, generator=g)
    circ = torch.randn(6, 4, generator=g)
    tiny = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1), nn.ReLU()).eval()
    tiny_data = torch.utils.data.TensorDataset(torch.randn(6, 3, 6, 6, generator=g), torch.zeros(6))
    x, lab = torch.randn(12, 4, generator=g), torch.tensor([0] * 6 + [1] * 6)
    heat = torch.zeros(3, 12, 12)
    heat[0, 0, 0] = heat[1, 6, 6] = heat[2, 11, 3] = 1.0
    ref_labels = torch.eye(16)[[0, 0, 3, 3]]
    vn = VirtualNeurons(seed=0).fit(torch.cat([torch.zeros(4, 2), torch.full((4, 2), 5.0)]), k=2)
    f = {"PURE": torch.tensor([[[0.0], [0.1], [5.0], [5.1]]]), "activations": torch.tensor([[[0.0], [5.0], [0.1], [5.1]]])}
    ed = ExplorerData([7], [1.0], f, {}, {}, concepts=torch.tensor([[2, 2, 4, -1]]))
    pure, base = torch.tensor([[0, 0, 1, 1]] * 2), torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1]])
    return [
        ("01-1", lambda a: nb01.check_top_neuron(a, labels, torch.tensor([[0, 1], [1, 2]]), concept=0), "0",
         "expected a whole number (int), got a string"),
        ("01-2", lambda a: nb01.check_top_references(a, model2, images, "2", neuron=1, n=5), [0, 1, 2, 3],
         "expected 5 items, got 4"),
        ("02-1", lambda a: nb02.check_top_channel(a, circ, torch.tensor([1, 1, 2, 2, 1, 2]), concept=1), [0, 1],
         "expected a whole number (int), got a list of 2 items"),
        ("02-2", lambda a: nb02.check_circuit(a, tiny, tiny_data, "3", "1", torch.tensor([[0, 1]] * 4), neuron=2,
                                              reference=1), torch.zeros(4), "expected 5 items, got 4"),
        ("03-1", lambda a: nb03.check_vn_names(a, ref_labels, torch.tensor([0, 0, 1, 1])), ["disc"],
         "expected 2 items, got 1"),
        ("03-2", lambda a: nb03.check_assignment(a, x, x[:2]), torch.zeros(12, 1, dtype=torch.long),
         "expected shape (12,), got a tensor of shape (12, 1)"),
        ("04-1", lambda a: nb04.check_border_boxes(a, heat), 5, "off by 3"),
        ("04-2", lambda a: nb04.check_crop_box(a, heat[1], 0.1), (1, 2), "expected 3 items, got 2"),
        ("04-3", lambda a: nb04.check_crop_area(a, heat, (0.1, 0.5)), {0.1: 0.5}, "missing [0.5]"),
        ("05-1", lambda a: nb05.check_inter(a, x, lab), [1.0, 2.0], "expected a number, got a list of 2 items"),
        ("05-2", lambda a: nb05.check_intra(a, x, lab), 1.1 * cluster_distances(x, lab).intra,
         "off by about 10 % of the expected value"),
        ("05-3", lambda a: nb05.check_distance_correlation(a, x, torch.randn(12, 3, generator=g)), "0.5",
         "expected a number, got a string"),
        ("05c-1", lambda a: nb05c.check_busiest_group(a, torch.rand(6, 2, generator=g),
                                                      {"a": torch.arange(3), "b": torch.arange(3, 6)}, virtual=1),
         3, "expected a string, got an int"),
        ("06-1", lambda a: nb06.check_best_gap(a, ed), 7, "not the right one"),
        ("06-2", lambda a: nb06.check_purity(a, ed, 0, 2), [1.0], "expected a number, got a list of 1 item"),
        ("07-1", lambda a: nb07.check_cluster_sizes(a, vn.labels[0]), [4, 3], "1 of 2 entries are wrong"),
        ("07-2", lambda a: nb07.check_agreement(a, pure, base), pure[0], "expected 2 items, got 4"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_every_exercise_says_what_is_wrong(case, capsys, monkeypatch):
    name, check, wrong, says = _cases()[case]
    printed = message(check, wrong, capsys, monkeypatch)
    assert says in printed, f"exercise {name}: {printed!r}"


@pytest.mark.slow
def test_nb05b_and_05c_hints_say_what_is_wrong(capsys, monkeypatch):
    import puretools as pt

    model, data, refs = _toy()
    from puretools.toyworld import causal_effects

    effects = causal_effects(model, data, "layer4", refs)
    check = lambda a: nb05b.check_labelled_at(a, effects, 0, min_drop=0.3)
    best = effects.drop[0].nan_to_num(-1.0).amax(-1)
    assert verdicts(check, [int((best >= 0.3).sum())], capsys, monkeypatch)[0] == [True]
    assert verdicts(check, [int((best >= 0.5).sum())], capsys, monkeypatch)[0] == [bool((best >= 0.3).sum() ==
                                                                                         (best >= 0.5).sum())]
    assert "expected a whole number (an int), got a float" in message(check, 2.5, capsys, monkeypatch)
    image = int(next(i for i in refs.indices[3] if len(data.objects(int(i))) >= 2))
    check = lambda a: nb05b.check_causal_label(a, model, data, "layer4", 3, image)
    assert "expected a whole number (an int), got a bool" in message(check, True, capsys, monkeypatch)
    circuits = pt.circuit_attributions(model, data, "layer4", "layer3", refs, neurons=[2], progress=False)
    vn = pt.VirtualNeurons(seed=0).fit(circuits, k=2, neurons=[2], layer="layer4", lower_layer="layer3")
    check = lambda a: nb05c.check_route_by_hand(a, model, data[0][0], "layer4", "layer3", vn, 2)
    assert "expected 2 items, got 1" in message(check, (circuits[0, 0],), capsys, monkeypatch)


def test_nb08_token_max_patch_grid_and_circuit(capsys, monkeypatch):
    """Notebook 08: the token max (CLS included) vs the CLS value, the patch grid vs a shifted one,
    a circuit vs one summed over the wrong axis."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    acts = torch.rand(60, 5, 3, generator=g)  # [N, T, C]: 1 CLS + 2 x 2 patches
    refs = SimpleNamespace(indices=torch.stack([acts[:, :, c].amax(1).topk(10).indices for c in range(3)]))
    right = acts[:, :, 1].amax(1).topk(10).indices
    cls_only = acts[:, 0, 1].topk(10).indices
    assert set(cls_only.tolist()) != set(right.tolist())
    ok, printed = verdicts(lambda a: nb08.check_token_max_references(a, acts, refs, neuron=1),
                           [right.flip(0).tolist(), cls_only], capsys, monkeypatch)
    assert ok == [True, False], printed
    values = torch.arange(5.0)
    ok, printed = verdicts(lambda a: nb08.check_patch_map(a, values, (2, 2), 1),
                           [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), values[:4].reshape(2, 2)], capsys, monkeypatch)
    assert ok == [True, False] and "entries are wrong" in printed, printed
    circuits = torch.randn(2, 3, 6, generator=g)
    ok, printed = verdicts(lambda a: nb08.check_circuit_by_hand(a, circuits, neuron=1, reference=2),
                           [circuits[1, 2].tolist(), circuits[1, 2, :5]], capsys, monkeypatch)
    assert ok == [True, False] and "not quite" in printed, printed
