"""The C-BPO loss and its baselines against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from idiolect.core.training.config import ObjectiveConfig
from idiolect.core.training.objectives import RewardShift, implicit_rewards, objective_loss


def lp(r, d):  # -log sigmoid(r - d)
    return math.log1p(math.exp(-(r - d)))


def lm(r, d):  # -log sigmoid(-(r - d))
    return math.log1p(math.exp(r - d))


def mean(xs):
    return sum(xs) / len(xs)


T, A, N = [1.0, -0.5], [0.2, -1.0, 0.5], [0.3]
D, PI = 0.1, 0.3


def tensors(*lists):
    return [torch.tensor(x, requires_grad=True) for x in lists]


def test_cbpo_matches_hand_computation():
    r_t, r_a, r_n = tensors(T, A, N)
    cfg = ObjectiveConfig("cbpo", lambda_n=0.5)
    loss, terms = objective_loss(cfg, PI, D, r_t, r_a, r_n)
    l_pos = mean([lp(r, D) for r in T])
    pure = mean([lm(r, D) for r in A]) - PI * mean([lm(r, D) for r in T])
    assert pure > 0
    expected = l_pos + pure / (1 - PI) + 0.5 * mean([lm(r, D) for r in N])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert terms["l_pure_neg"] == pytest.approx(pure, rel=1e-6) and terms["pu_clamped"] == 0.0


def test_cbpo_clamps_a_negative_pu_term_and_stops_its_gradient():
    high_t = [3.0, 2.5]  # targets far above delta: the subtracted positive bias outweighs the peers' loss
    r_t, r_a, r_n = tensors(high_t, [-2.0, -3.0], [])
    loss, terms = objective_loss(ObjectiveConfig("cbpo"), 0.8, 0.0, r_t, r_a, r_n)
    pure = mean([lm(r, 0.0) for r in [-2.0, -3.0]]) - 0.8 * mean([lm(r, 0.0) for r in high_t])
    assert pure < 0 and terms["pu_clamped"] == 1.0
    assert float(loss) == pytest.approx(mean([lp(r, 0.0) for r in high_t]), rel=1e-6)
    loss.backward()
    assert r_a.grad is None or torch.all(
        r_a.grad == 0
    )  # peers get no push while the PU risk estimate is negative


def test_pi_zero_ablation_and_bco_and_sft():
    r_t, r_a, r_n = tensors(T, A, N)
    loss, terms = objective_loss(ObjectiveConfig("cbpo_pi0"), PI, D, r_t, r_a, r_n)
    expected = mean([lp(r, D) for r in T]) + mean([lm(r, D) for r in A]) + mean([lm(r, D) for r in N])
    assert float(loss) == pytest.approx(expected, rel=1e-6) and terms["pi"] == 0.0
    # BCO: one count-weighted mean over every sample, peers as plain negatives.
    loss, _ = objective_loss(ObjectiveConfig("bco"), PI, D, *tensors(T, A, N))
    all_losses = [lp(r, D) for r in T] + [lm(r, D) for r in A] + [lm(r, D) for r in N]
    assert float(loss) == pytest.approx(mean(all_losses), rel=1e-6)
    nll = torch.tensor(2.5)
    loss, terms = objective_loss(ObjectiveConfig("sft"), PI, D, *tensors(T, A, N), nll_tar=nll)
    assert float(loss) == 2.5 and terms["sft"] == 2.5


def test_lambda_sft_adds_the_target_nll():
    base, _ = objective_loss(ObjectiveConfig("cbpo"), PI, D, *tensors(T, A, []))
    with_sft, _ = objective_loss(
        ObjectiveConfig("cbpo", lambda_sft=0.5), PI, D, *tensors(T, A, []), nll_tar=torch.tensor(3.0)
    )
    assert float(with_sft) == pytest.approx(float(base) + 1.5, rel=1e-6)


def test_a_cbpo_step_raises_target_rewards_and_lowers_peer_rewards():
    r_t, r_a, r_n = tensors([0.0, 0.0], [0.0, 0.0, 0.0], [])
    loss, _ = objective_loss(ObjectiveConfig("cbpo"), 0.2, 0.0, r_t, r_a, r_n)
    loss.backward()
    assert torch.all(r_t.grad < 0) and torch.all(r_a.grad > 0)  # descent: targets up, peers down


def test_reward_shift_separate_and_pooled():
    sep = RewardShift("separate", decay=0.5)
    sep.update(torch.tensor([2.0, 4.0]), torch.tensor([0.0, -2.0, -4.0]))
    assert (sep.mean_tar, sep.mean_aux) == (1.5, -1.0)  # the EMAs; delta uses them bias-corrected
    assert sep.value == pytest.approx((3.0 - 2.0) / 2)
    sep.update(torch.tensor([1.0]), torch.tensor([1.0]))
    assert sep.mean_tar == pytest.approx(1.25) and sep.mean_aux == pytest.approx(0.0)
    assert sep.value == pytest.approx((1.25 / 0.75 + 0.0) / 2)
    pooled = RewardShift("pooled")
    pooled.update(torch.tensor([2.0, 4.0]), torch.tensor([0.0, -2.0, -4.0]), torch.tensor([6.0]))
    assert pooled.value == pytest.approx(1.0)  # (2 + 4 + 0 - 2 - 4 + 6) / 6: the bigger set dominates
    clone = RewardShift()
    clone.load_state_dict(sep.state_dict())
    assert clone.value == sep.value


def test_protocol_delta_is_active_from_the_first_step():
    """The reference point follows the rewards from step one (bias-corrected EMAs), not 5% of them: with the
    uncorrected EMA at decay 0.95, 46% of delta's weight was still on the starting 0 after 15 steps."""
    shift = RewardShift("separate", decay=0.95)
    shift.update(torch.tensor([4.0, 4.0]), torch.tensor([-2.0]))
    assert shift.value == pytest.approx(1.0)  # (4 + -2) / 2, not 0.05 of it
    for _ in range(14):
        shift.update(torch.tensor([4.0]), torch.tensor([-2.0]))
    assert shift.value == pytest.approx(1.0)  # constant rewards: delta is their midpoint at every step
    old = RewardShift("separate", decay=0.95)  # a checkpoint written before the correction resumes unchanged
    old.load_state_dict({"mode": "separate", "decay": 0.95, "mean_tar": 0.4, "mean_aux": -0.2, "total": 0.0,
                         "count": 0})  # fmt: skip
    assert old.value == pytest.approx(0.1)


def test_invalid_settings_are_refused():
    for kwargs in ({"name": "dpo"}, {"pi": 0.95}, {"beta": 0}, {"delta_decay": 1.0}):
        with pytest.raises(ValueError):
            ObjectiveConfig(**kwargs)


def test_kto_matches_hand_computation():
    """TRL's KTO loss: 1 - sigmoid(r - z0) for the target, 1 - sigmoid(z0 - r) for peers and thumbs-down, with
    z0 the batch's mean reward clamped at 0 (no gradient through it)."""

    def sig(x):
        return 1 / (1 + math.exp(-x))

    r_t, r_a, r_n = tensors(T, A, N)
    loss, terms = objective_loss(ObjectiveConfig("kto"), PI, D, r_t, r_a, r_n)
    z0 = max(0.0, mean(T + A + N))
    expected = mean([1 - sig(r - z0) for r in T] + [1 - sig(z0 - r) for r in A + N])
    assert float(loss) == pytest.approx(expected, rel=1e-6) and terms["z0"] == pytest.approx(z0)
    low = tensors([-1.0], [-2.0], [])
    loss, terms = objective_loss(ObjectiveConfig("kto"), PI, D, *low)
    assert terms["z0"] == 0.0  # a negative mean reward is clamped
    loss.backward()
    assert low[0].grad[0] < 0 < low[1].grad[0]  # pushes the target's reward up and the peer's down


def test_every_objective_the_cli_offers_has_its_own_loss():
    """Each name of the registry trains with a loss of its own: the CLI offers it, it gives a finite loss, and
    no two objectives give the same loss on one batch (a name that fell through to another's loss would). A
    name outside the registry is an error, never C-BPO."""
    from idiolect.core.cli import build_parser
    from idiolect.core.training.config import OBJECTIVES

    losses = {}
    for name in OBJECTIVES:
        assert build_parser().parse_args(["train", "--objective", name]).objective == name
        loss, terms = objective_loss(
            ObjectiveConfig(name), PI, D, *tensors(T, A, N), nll_tar=torch.tensor(2.5)
        )
        assert math.isfinite(float(loss)) and terms["loss"] == pytest.approx(float(loss))
        losses[name] = round(float(loss), 6)
    assert len(set(losses.values())) == len(OBJECTIVES), losses
    unknown = ObjectiveConfig("cbpo")
    unknown.name = "dpo"  # past the config's own check, as a new name without a loss would be
    with pytest.raises(ValueError, match="no loss for objective 'dpo'"):
        objective_loss(unknown, PI, D, *tensors(T, A, N))


def test_length_normalized_rewards_do_not_grow_with_the_answer():
    logps, ref, counts = torch.tensor([-30.0, -300.0]), torch.tensor([-40.0, -400.0]), torch.tensor([10, 100])
    summed = implicit_rewards(ObjectiveConfig("cbpo", beta=0.1), logps, ref, counts)
    assert summed.tolist() == pytest.approx([1.0, 10.0])  # ten times the tokens, ten times the reward
    mean = implicit_rewards(ObjectiveConfig("cbpo", beta=1.0, reward_norm="mean"), logps, ref, counts)
    assert mean.tolist() == pytest.approx([1.0, 1.0])  # the same per-token gain, the same reward
    with pytest.raises(ValueError, match="reward_norm"):
        ObjectiveConfig("cbpo", reward_norm="max")


def test_protocol_pi_recovers_a_known_share_of_the_users_own_texts():
    """pi on a synthetic pool: peers with a known share of the user's own held-out texts mixed in. On the two
    Stack Exchange writers with 44+ texts (20 texts to train the classifier, 120 peer texts, 5 random draws per
    share), the estimate is the upper bound it is derived as: never more than 0.05 below the share, its mean over
    draws at most 0.25 above it, and growing with the share."""
    import random
    from collections import defaultdict

    from conftest import shared_file

    from idiolect.bench.personalization import read_rows
    from idiolect.core.training.pu_prior import estimate_class_prior

    rows = read_rows(str(shared_file("beer.stackexchange.com_Posts.xml.gz")))
    by = defaultdict(list)
    for r in rows:
        by[r["writer"]].append(r["text"])
    writers = sorted((w for w, t in by.items() if len(t) >= 40), key=lambda w: -len(by[w]))
    assert len(writers) >= 2
    for w in writers[:2]:
        means = []
        for share in (0.0, 0.1, 0.2):
            estimates = []
            for draw in range(5):
                rng = random.Random(draw)
                texts = sorted(by[w])
                rng.shuffle(texts)
                others = sorted(t for v, ts in by.items() if v != w for t in ts)
                rng.shuffle(others)
                k = round(share * 120)
                estimates.append(estimate_class_prior(texts[:20], texts[20:][:k] + others[: 120 - k])["pi"])
            assert min(estimates) >= share - 0.05, (w, share, estimates)
            means.append(sum(estimates) / len(estimates))
            assert means[-1] <= share + 0.25, (w, share, estimates)
        assert means[0] < means[1] < means[2], (w, means)
