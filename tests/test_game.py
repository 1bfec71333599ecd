"""The coalition game and the dummy-player loss as plain functions, checked against independent brute force."""

import itertools
import math

import pytest
import torch

import pipeline_interpretable_ddpm as pid
from conftest import tiny_unet
from denoisers import PerPixelDenoiser

SIZE = 16


def random_partition(batch: int, k: int, seed: int) -> torch.Tensor:
    labels = torch.randint(0, k, (batch, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    labels[:, 0, :k] = torch.arange(k)  # every region non-empty
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()


def setup_game(batch=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    baseline = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    return x_t, baseline, timesteps, random_partition(batch, k, seed)


def model_fn_of(model):
    def model_fn(x, t):
        return model(x, t).sample

    return model_fn


def brute_force_loss(model_fn, x_t, timesteps, regions, baseline, value):
    """L_IE = mean over all 2^K coalitions S of sum_k of the Theorem 1 term, written out with Python sets."""
    b, k = regions.shape[:2]
    players = range(k)

    def eps_of(coalition):
        keep = sum((regions[:, j : j + 1] for j in coalition), torch.zeros(b, 1, SIZE, SIZE))
        return model_fn(keep * x_t + (1 - keep) * baseline, timesteps).double()

    def value_of(eps, out_k):  # per example: (B, C, H, W) masked to region k, or (B, C) region means
        region = regions[:, out_k : out_k + 1].double()
        if value == "pixel":
            return eps * region
        return (eps * region).sum((-2, -1)) / region.sum((-2, -1))

    def distance(a, b_):
        d = (a - b_) ** 2
        return d.sum((1, 2, 3)) / (3 * SIZE * SIZE) if value == "pixel" else d.mean(1)

    empty = eps_of(())
    singles = {j: eps_of((j,)) for j in players}
    total = torch.zeros(b, dtype=torch.float64)
    subsets = [c for size in range(k + 1) for c in itertools.combinations(players, size)]
    for coalition in subsets:
        eps = eps_of(coalition)
        for out_k in players:
            reference = singles[out_k] if out_k in coalition else empty
            total += distance(value_of(eps, out_k), value_of(reference, out_k))
    return (total / len(subsets)).mean().item()


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------------
def test_all_coalitions_and_coalition_inputs():
    coalitions = pid.all_coalitions(3)
    assert coalitions.shape == (8, 3) and coalitions.dtype == torch.bool
    assert {tuple(r.tolist()) for r in coalitions} == set(itertools.product([False, True], repeat=3))
    assert not coalitions[0].any() and coalitions[-1].all()

    x_t, baseline, _, regions = setup_game(batch=2, k=3)
    inputs = pid.coalition_inputs(x_t, baseline, regions, coalitions)
    assert inputs.shape == (2, 8, 3, SIZE, SIZE)
    for s, coalition in enumerate(coalitions):
        for j in range(3):
            inside = regions[:, j : j + 1].expand(-1, 3, -1, -1) > 0.5
            source = x_t if coalition[j] else baseline
            assert torch.equal(inputs[:, s][inside], source[inside])
    # Per-example coalitions (B, M, K).
    per_example = torch.tensor([[[True, False, False]], [[False, False, True]]])
    built = pid.coalition_inputs(x_t, baseline, regions, per_example)
    assert torch.equal(built[0, 0], pid.coalition_inputs(x_t, baseline, regions, coalitions[1:2])[0, 0])
    assert torch.equal(built[1, 0], pid.coalition_inputs(x_t, baseline, regions, coalitions[4:5])[1, 0])


def test_region_values_shapes_and_means():
    eps = torch.randn(2, 3, SIZE, SIZE)
    regions = random_partition(2, 4, seed=1)
    pixel = pid.region_values(eps, regions, "pixel")
    assert pixel.shape == (2, 4, 3, SIZE, SIZE)
    torch.testing.assert_close(pixel.sum(1), eps)  # a partition: the regions add back up to eps
    mean = pid.region_values(eps, regions, "mean")
    assert mean.shape == (2, 4, 3)
    inside = regions[1, 2] > 0.5
    torch.testing.assert_close(mean[1, 2], eps[1][:, inside].mean(-1))
    with pytest.raises(ValueError, match="value must be 'pixel' or 'mean'"):
        pid.region_values(eps, regions, "max")


def test_shapley_weight_matrix_matches_the_factorial_formula():
    k = 4
    values = torch.randn(2**k, dtype=torch.float64)  # an arbitrary game v(S), S encoded as bits
    coalitions = pid.all_coalitions(k)
    index = {frozenset(torch.nonzero(c).flatten().tolist()): s for s, c in enumerate(coalitions)}
    expected = torch.zeros(k, dtype=torch.float64)
    for j in range(k):
        others = [p for p in range(k) if p != j]
        for size in range(k):
            w = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for c in itertools.combinations(others, size):
                expected[j] += w * (values[index[frozenset(c) | {j}]] - values[index[frozenset(c)]])
    torch.testing.assert_close(pid.shapley_weight_matrix(k) @ values, expected)
    torch.testing.assert_close(pid.shapley_along(values[None, :, None], dim=1)[0, :, 0], expected)
    assert torch.isclose(expected.sum(), values[-1] - values[0])  # efficiency
    with pytest.raises(ValueError, match="all 2\\^K coalitions are needed"):
        pid.shapley_along(torch.randn(6), dim=0)


# ----------------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["pixel", "mean"])
def test_exact_loss_equals_brute_force(value):
    model_fn = model_fn_of(tiny_unet())
    x_t, baseline, timesteps, regions = setup_game(batch=3, k=3, seed=2)
    with torch.no_grad():
        exact = pid.interpretability_loss(model_fn, x_t, timesteps, regions, baseline, estimator="exact", value=value)
        brute = brute_force_loss(model_fn, x_t, timesteps, regions, baseline, value)
    assert brute > 1e-8
    assert exact.item() == pytest.approx(brute, rel=1e-4)


@pytest.mark.parametrize("value", ["pixel", "mean"])
@pytest.mark.parametrize("estimator", ["exact", "sampled", "pair"])
def test_per_pixel_model_has_zero_loss_and_mixing_model_does_not(estimator, value):
    x_t, baseline, timesteps, regions = setup_game(batch=4, k=3, seed=3)
    kwargs = dict(estimator=estimator, value=value, num_coalitions=4)
    with torch.no_grad():
        local = pid.interpretability_loss(
            model_fn_of(PerPixelDenoiser()),
            x_t,
            timesteps,
            regions,
            baseline,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )
        mixing = pid.interpretability_loss(
            model_fn_of(tiny_unet()),
            x_t,
            timesteps,
            regions,
            baseline,
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )
    assert local.ndim == 0 and local.item() < 1e-12
    assert mixing.item() > 1e-6


def pair_loss(model_fn, x_t, baseline, timesteps, regions, **kwargs) -> torch.Tensor:
    """The pair estimator of L_IE on `setup_game`'s tensors with a fixed draw (generator seed 0)."""
    return pid.interpretability_loss(
        model_fn,
        x_t,
        timesteps,
        regions,
        baseline,
        estimator="pair",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def test_loss_is_differentiable_and_weighted():
    unet = tiny_unet()
    x_t, baseline, timesteps, regions = setup_game(batch=2, k=2, seed=4)
    loss = pair_loss(model_fn_of(unet), x_t, baseline, timesteps, regions)
    loss.backward()
    assert unet.conv_in.weight.grad is not None and unet.conv_in.weight.grad.abs().sum() > 0
    with torch.no_grad():
        weights = torch.tensor([1.0, 0.0])
        weighted = pid.interpretability_loss(
            model_fn_of(unet), x_t, timesteps, regions, baseline, estimator="exact", example_weights=weights
        )
        first_only = pid.interpretability_loss(
            model_fn_of(unet), x_t[:1], timesteps[:1], regions[:1], baseline[:1], estimator="exact"
        )
    assert weighted.item() == pytest.approx(first_only.item(), rel=1e-4)
    with pytest.raises(ValueError, match="estimator must be 'exact', 'sampled' or 'pair'"):
        pid.interpretability_loss(model_fn_of(unet), x_t, timesteps, regions, baseline, estimator="castro")


@pytest.mark.slow  # a statistical study: hundreds of draws of the loss
@pytest.mark.parametrize("estimator, draws", [("pair", 400), ("sampled", 150)])
def test_sampled_estimators_are_unbiased_for_the_exact_loss(estimator, draws):
    """Mean of many independent draws lies within 4 standard errors of the exact loss; the standard error is small
    enough that a factor-K bias (e.g. forgetting to scale the pair estimate by K) would be caught."""
    model_fn = model_fn_of(tiny_unet())
    k = 3
    x_t, baseline, timesteps, regions = setup_game(batch=4, k=k, seed=5)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        exact = pid.interpretability_loss(model_fn, x_t, timesteps, regions, baseline, estimator="exact").item()
        estimates = torch.tensor(
            [
                pid.interpretability_loss(
                    model_fn,
                    x_t,
                    timesteps,
                    regions,
                    baseline,
                    estimator=estimator,
                    num_coalitions=2,
                    generator=generator,
                ).item()
                for _ in range(draws)
            ],
            dtype=torch.float64,
        )
    mean, standard_error = estimates.mean().item(), (estimates.std() / math.sqrt(draws)).item()
    assert standard_error > 0  # the estimates do vary
    assert abs(mean - exact) < 4 * standard_error, (mean, exact, standard_error)
    assert 4 * standard_error < exact * (1 - 1 / k), "too few draws for the test to detect a bias"


def stripe_partition(batch: int, k: int) -> torch.Tensor:
    """k vertical stripes: regions with interiors (unlike `random_partition`)."""
    labels = (torch.arange(SIZE) * k // SIZE).expand(batch, SIZE, SIZE)
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()


def test_region_interiors_erode_only_where_regions_meet():
    regions = stripe_partition(1, 2)  # columns 0-7 and 8-15
    inner = pid.region_interiors(regions, 2)
    assert inner[0, 0, :, :6].eq(1).all() and inner[0, 0, :, 6:].eq(0).all()  # the image edge is not a border
    assert inner[0, 1, :, 10:].eq(1).all() and inner[0, 1, :, :10].eq(0).all()
    assert torch.equal(pid.region_interiors(regions, 0), regions)


@pytest.mark.parametrize("estimator", ["exact", "pair"])
def test_border_leaves_out_exactly_the_band_a_local_mixer_reaches(estimator):
    def blur(x, t):  # each output pixel mixes its 3x3 neighbourhood: only pixels next to another region leak
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)

    x_t, baseline, timesteps, _ = setup_game(batch=3, k=3, seed=5)
    regions = stripe_partition(3, 3)
    losses = {
        border: pid.interpretability_loss(
            blur,
            x_t,
            timesteps,
            regions,
            baseline,
            estimator=estimator,
            generator=torch.Generator().manual_seed(0),
            border=border,
        ).item()
        for border in (0, 1)
    }
    assert losses[0] > 1e-4 and losses[1] < 1e-12
    with pytest.raises(ValueError, match="border must be >= 0"):
        pid.interpretability_loss(blur, x_t, timesteps, regions, baseline, border=-1)


def follows_region_mean(regions, source, target=None):
    """A model whose outputs in region `target` (every pixel when None) are their own input plus the mean of region
    `source` (per example and channel): it makes `source` a player of those regions' games and of no other."""

    def model_fn(x, t):
        r = regions.repeat_interleave(x.shape[0] // regions.shape[0], 0)
        source_mask = r[:, source : source + 1]
        mean = (x * source_mask).sum((-2, -1), keepdim=True) / source_mask.sum((-2, -1), keepdim=True)
        return x + (mean if target is None else r[:, target : target + 1] * mean)

    return model_fn


def test_context_players_may_influence_every_region_but_nothing_else_may():
    """With the rest region as context (`context=[rest]`), a model whose outputs follow the rest region's mean has no
    loss, while one whose rest output follows another region still has; the plain game penalises both."""
    game = setup_game(batch=8, k=3, seed=7)  # x_t, baseline, timesteps, regions
    regions, rest = game[3], 2

    def loss(model_fn, context):
        return pair_loss(model_fn, *game, context=context).item()

    def follows(source):  # every output pixel = its own input + the mean of region `source`
        return follows_region_mean(regions, source)

    assert loss(follows(rest), [rest]) < 1e-12 and loss(follows(rest), None) > 1e-3
    assert loss(follows(0), [rest]) > 1e-3
    plan = pid.plan_coalitions(regions, "pair", generator=torch.Generator().manual_seed(1), context=[rest])
    others = plan.out_k != rest
    assert plan.coalitions[others][:, :, rest].all()  # context present in S and in the reference
    rows = torch.arange(len(plan.out_k))
    expected_reference = torch.zeros_like(plan.coalitions[:, 1])
    expected_reference[others, rest] = True
    expected_reference[rows, plan.out_k] = plan.coalitions[rows, 0, plan.out_k]
    assert torch.equal(plan.coalitions[:, 1], expected_reference)  # {k} or empty, plus the context
    with pytest.raises(ValueError, match="context players need estimator='pair'"):
        pid.plan_coalitions(regions, "exact", context=[rest])
    with pytest.raises(ValueError, match=r"context players must be in \[0, 3\)"):
        pid.plan_coalitions(regions, "pair", context=[3])


def test_presence_probabilities_draw_a_player_more_often_and_keep_the_zero_set():
    """`presence` changes how often each player is in S (so how often it is asked to be a dummy) but not which models
    have zero loss: a region-local model still has none, a leaking one still has some."""
    x_t, baseline, timesteps, regions = setup_game(batch=4000, k=3, seed=3)
    plan = pid.plan_coalitions(regions, "pair", generator=torch.Generator().manual_seed(0), presence=[0.9, 0.5, 0.2])
    freq = plan.coalitions[:, 0].float().mean(0)
    assert torch.allclose(freq, torch.tensor([0.9, 0.5, 0.2]), atol=0.03), freq
    default = pid.plan_coalitions(regions, "pair", generator=torch.Generator().manual_seed(0))
    same = pid.plan_coalitions(regions, "pair", generator=torch.Generator().manual_seed(0), presence=[0.5] * 3)
    assert torch.equal(default.coalitions, same.coalitions)  # 1/2 each is the default game, draw for draw
    sampled = pid.plan_coalitions(
        regions, "sampled", num_coalitions=2, presence=[0.9, 0.5, 0.2], generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(sampled.coalitions[:, 4:].float().mean((0, 1)), torch.tensor([0.9, 0.5, 0.2]), atol=0.03)

    x_t, baseline, timesteps, regions = setup_game(batch=8, k=3, seed=7)
    local = lambda x, t: 2 * x  # noqa: E731 - every output pixel follows its own input only
    leak = lambda x, t: x + x.mean((-2, -1), keepdim=True)  # noqa: E731 - every pixel follows the whole image
    for presence in (None, [0.9, 0.5, 0.2]):
        kw = dict(estimator="pair", generator=torch.Generator().manual_seed(0), presence=presence)
        assert pid.interpretability_loss(local, x_t, timesteps, regions, baseline, **kw).item() < 1e-12
        assert pid.interpretability_loss(leak, x_t, timesteps, regions, baseline, **kw).item() > 1e-4
    for bad in ([0.5, 0.5], [0.5, 1.0, 0.5], [0.0, 0.5, 0.5]):
        with pytest.raises(ValueError, match="presence must be 3 probabilities in \\(0, 1\\)"):
            pid.plan_coalitions(regions, "pair", presence=bad)
    with pytest.raises(ValueError, match="presence probabilities need estimator='pair' or 'sampled'"):
        pid.plan_coalitions(regions, "exact", presence=[0.9, 0.5, 0.5])


def test_open_outputs_free_the_context_region_but_never_the_parts():
    """`open_outputs` takes a region's outputs out of the game per example: with the rest open, a model whose rest
    follows a part has no loss (the plain one-way game penalises it), a model whose part follows another part still
    has; the output region is drawn uniformly among the closed ones and the pair is scaled by their number."""
    game = setup_game(batch=8, k=3, seed=7)  # x_t, baseline, timesteps, regions
    regions, rest = game[3], 2
    open_rest = torch.zeros(8, 3, dtype=torch.bool)
    open_rest[:, rest] = True

    def loss(model_fn, open_outputs):
        return pair_loss(model_fn, *game, context=[rest], open_outputs=open_outputs).item()

    def follows(target, source):  # region `target`'s outputs = its own input + the mean of region `source`
        return follows_region_mean(regions, source, target)

    assert loss(follows(rest, 0), open_rest) < 1e-12 and loss(follows(rest, 0), None) > 1e-3
    assert loss(follows(0, 1), open_rest) > 1e-3

    many = torch.zeros(6000, 3, dtype=torch.bool)
    many[::2, rest] = True
    plan = pid.plan_coalitions(
        regions.repeat(750, 1, 1, 1), "pair", generator=torch.Generator().manual_seed(2), open_outputs=many
    )
    assert not (plan.out_k[::2] == rest).any()
    assert torch.equal(plan.num_outputs, 3 - many.sum(1))
    assert torch.allclose(
        torch.bincount(plan.out_k[::2], minlength=3).float() / 3000, torch.tensor([0.5, 0.5, 0]), atol=0.03
    )
    assert torch.allclose(
        torch.bincount(plan.out_k[1::2], minlength=3).float() / 3000, torch.full((3,), 1 / 3), atol=0.03
    )
    with pytest.raises(ValueError, match="open_outputs needs estimator='pair'"):
        pid.plan_coalitions(regions, "exact", open_outputs=open_rest)
    with pytest.raises(ValueError, match=r"open_outputs must be a bool tensor of shape \(8, 3\)"):
        pid.plan_coalitions(regions, "pair", open_outputs=open_rest[:4])
    with pytest.raises(ValueError, match="leaves every output region of an example out of the game"):
        pid.plan_coalitions(regions, "pair", open_outputs=torch.ones(8, 3, dtype=torch.bool))
