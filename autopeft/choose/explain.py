"""The sentence that says why a method was chosen: what decided, how close the runner-up came, and
what the pilots could not yet tell."""

from __future__ import annotations

from ..sizes import format_size

def explain(chosen, row, candidates, rows, order, mode, limit, goal, pilots, prior_loss=None, evidence=None,
            confidence=None, coverage=None, rates=None) -> str:
    """``coverage``: a clause saying how many methods the pilot budget covered, when not all; ``rates``:
    the :class:`autopeft.choose.ranking.RateEvidence` that placed the learning rates, if any."""
    n = len(candidates)
    parts = [f"{chosen.method} is recommended"]
    if evidence is not None:
        parts.append(evidence.sentence())
    if rates is not None:
        parts.append(rates.sentence())
    if mode == "pilot" and chosen.pilot:
        from ..profiles import end_loss

        place = sorted(range(n), key=lambda i: end_loss(candidates[i].pilot))
        loss_rank = place.index(candidates.index(chosen)) + 1
        piloted = sum(1 for c in candidates if c.pilot)
        standing = ("the only pilot the budget allowed" if piloted == 1 else
                    f"the {'' if loss_rank == 1 else ordinal(loss_rank) + ' '}lowest loss of the {piloted} "
                    f"methods piloted")
        unpiloted = coverage or f"{n - piloted} more ranked without a pilot"
        parts.append(f"its pilot ran {chosen.pilot[-1].step} steps at learning rate {chosen.learning_rate:g}, "
                     f"{standing} ({unpiloted}), and the recommender predicts it will finish best")
        close = too_close_to_call(chosen, candidates[order[1]]) if goal.quality == 1 and n > 1 else None
        if close:
            parts.append(close)
    elif mode == "static":
        parts.append("ranked without pilots, from its cost and how the method did in the stored profiles")
    elif mode == "pilot-loss":
        parts.append(f"its pilot (learning rate {chosen.learning_rate:g}) reached the lowest loss; the stored "
                     f"profiles hold pilot curves of too few benchmarks to learn more from")
    else:
        parts.append("no pilot ran and no profiles are stored: the first feasible method")
    unlearned = not_learned_yet(candidates, prior_loss) if mode in ("pilot", "pilot-loss") else None
    if unlearned:
        parts.append(unlearned)
    memory = chosen.peak_memory_bytes
    if memory:
        parts.append(f"it needs about {format_size(memory)}" + (f" of the {format_size(limit)} allowed" if limit else ""))
    if goal.quality < 1:
        parts.append(f"objective: {', '.join(f'{k} {v:.0%}' for k, v in goal.model_dump().items() if v)}")
    if chosen.method != "lora":
        lora = next((k for k, i in enumerate(order) if candidates[i].method == "lora"), None)
        if lora is not None:
            parts.append(f"LoRA, the usual choice, ranks {ordinal(lora + 1)}")
    sure = how_sure(chosen, candidates, mode, confidence)
    if sure:
        parts.append(sure)
    return "; ".join(parts[:1]) + ": " + "; ".join(parts[1:]) + "."


def within_words(task: str | None) -> str:
    """What "within one point" means for a task: of accuracy for classification, of the spread otherwise."""
    return ("1 point of accuracy" if task in ("seq-cls", "token-cls")
            else "1% of the best-to-worst spread")


def how_sure(chosen, candidates, mode, confidence) -> str | None:
    """A clause giving the probability that the choice lands within one point of the best candidate,
    and what would raise it where it is low."""
    from .confidence import advice

    if confidence is None:
        return None
    text = (f"the chance that it ends as good as the best candidate, give or take {within_words(chosen.task)}, is "
            f"about {confidence:.0%}")
    more = advice(confidence, mode, sum(1 for c in candidates if c.pilot), len(candidates))
    return text + (f"; {more}" if more else "")

def too_close_to_call(chosen, runner_up) -> str | None:
    """A clause saying the runner-up's pilot ended within noise of the chosen one's, or None."""
    from ..profiles import end_loss_gap

    gap = end_loss_gap(chosen.pilot, runner_up.pilot)
    if gap is None or abs(gap[0]) > 2 * gap[1]:
        return None
    return (f"its pilot loss and {runner_up.method}'s differ by {abs(gap[0]):.3f}, less than twice the standard "
            f"error of that gap ({gap[1]:.3f}): either is a sound choice, and a larger --pilot-budget might "
            f"tell them apart")


def not_learned_yet(candidates, prior_loss: float | None) -> str | None:
    """A clause saying no pilot got below the loss of the label frequencies, or None. On a task a
    model learns late (GSM8K questions sorted by the length of their solution, with MiniLM: every
    pilot up to half the run ends at that loss), the pilots then rank how methods began, not what
    they learned, and the user should know the choice rests on little."""
    from ..profiles import end_loss

    ends = [end_loss(c.pilot) for c in candidates if c.pilot]
    if prior_loss is None or not ends or min(ends) < prior_loss:
        return None
    return (f"no pilot has yet learned more than the label frequencies (the lowest pilot loss, {min(ends):.3f}, "
            f"is no lower than {prior_loss:.3f}, that of answering every example with them): the ranking rests "
            f"on how the methods began, and a larger --pilot-budget would make it firmer")


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
