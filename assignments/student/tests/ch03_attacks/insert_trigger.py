from otter.test_files import test_case

OK_FORMAT = False

name = "insert_trigger"
points = 10

@test_case(points=1, hidden=False)
def test_returns_the_sentence_with_one_more_word(insert_trigger):
    from bedkd_core.grading import fixtures

    texts, _ = fixtures.sentences("sst2", 20, seed=3)
    texts = [t for t in texts if "cf" not in t.split()][:5]
    for i, text in enumerate(texts):
        out = insert_trigger(text=text, triggers=["cf"], num_insertions=1,
                             seed=i)
        assert isinstance(out, str), f"returned {type(out).__name__}, not str"
        words = out.split()
        assert words.count("cf") == 1, "insert the trigger word once"
        words.remove("cf")
        assert words == text.split(), (
            "without the trigger word the result should be the sentence's "
            "words, in order, joined by single spaces")
@test_case(points=3, hidden=False)
def test_matches_badnets_on_sst2(insert_trigger):
    import random
    from bedkd_core.attacks import AttackConfig, make_attack
    from bedkd_core.grading import fixtures

    texts, _ = fixtures.train_rows("sst2", 20, seed=3)
    triggers = ["cf", "mn", "bb", "tq"]
    for i, text in enumerate(texts):
        n = 1 + i % 3
        attack = make_attack(config=AttackConfig(
            name="badnets", triggers=tuple(triggers), num_insertions=n),
            dataset="sst2")
        want = attack.trigger(text, random.Random(i))
        got = insert_trigger(text=text, triggers=list(triggers),
                             num_insertions=n, seed=i)
        assert isinstance(got, str), f"returned {type(got).__name__}, not str"
        kept = [w for w in got.split() if w not in triggers]
        assert kept == [w for w in text.split() if w not in triggers], (
            f"row {i}: the sentence's own words are changed, lost or out "
            "of order; insert whole words between them")
        assert len(got.split()) == len(text.split()) + n, (
            f"row {i}: {n} insertion(s) should add {n} word(s)")
        assert got == want, (
            f"row {i} (seed {i}, {n} insertion(s)): the right number of "
            "trigger words, but other words or positions than BadNets' "
            "rule gives; draw all words first, then the positions")
