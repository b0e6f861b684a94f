"""BestCheckpoint: the highest validation score among selectable epochs; DUCAT's late start forgets earlier bests."""

from generalist_trainer.trainer.best_checkpoint import BestCheckpoint


def test_keeps_the_highest_score_and_ties_keep_the_earlier_epoch():
    best = BestCheckpoint()
    assert [best.update(s, e, lambda _: True) for e, s in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7)]] == [
        True, True, False, False]
    assert (best.score, best.epoch) == (0.7, 2)


def test_epochs_before_a_late_objective_are_forgotten_once_it_starts():
    def from_epoch_3(epoch):
        return epoch >= 3

    best = BestCheckpoint()
    assert not best.update(0.9, 1, from_epoch_3) and not best.update(0.95, 2, from_epoch_3)
    assert (best.score, best.epoch) == (None, None)
    # An unselectable epoch never becomes best; the first selectable one does even with a lower score.
    best = BestCheckpoint(0.9, 2)  # e.g. resumed from a checkpoint written before the rule existed
    assert best.update(0.4, 3, from_epoch_3) and (best.score, best.epoch) == (0.4, 3)
    assert not best.update(0.3, 4, from_epoch_3) and best.update(0.5, 5, from_epoch_3)


def test_no_validation_never_improves_and_the_state_round_trips():
    best = BestCheckpoint()
    assert not best.update(None, 1, lambda _: True)
    best.update(0.25, 2, lambda _: True)
    assert BestCheckpoint.from_state(best.state_dict()) == best == BestCheckpoint(0.25, 2)
