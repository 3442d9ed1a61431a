"""The toy task: reward parsing (both styles, no eval), expert correctness, splits."""

import random

import pytest

from minichord.tasks.toy import HARDER_CARRIES, TRAIN_DIGITS, inner_carries
from minichord.tasks import (OTHER_SKILLS, SKILLS, Problem, expert_response, extract_answer, is_reserved, make_splits,
                             pretrain_corpus, reward, style_texts, terse_response)


# ---- reward ---------------------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    ("132", "132"),
    ("  132 \n", "132"),
    ("7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132", "132"),
    ("answer:132", "132"),
    ("Answer:  2 5  9", "2 5 9"),
    ("reasoning...\n#### 1,234", "1234"),
    ("answer: 1\nanswer: 7", "7"),  # the last answer line counts
])
def test_extract_answer_both_styles(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("response", ["", "   ", "\n\n", "line one\nline two", "answer:", "answer:   \n"])
def test_extract_answer_none_when_no_answer(response):
    assert extract_answer(response) is None


@pytest.mark.parametrize("response", [
    "1+1", "__import__('os')", "__import__('os').system('true')", "2.0", "02", " 2 2", "answer: 1+1",
    "two", "2.", "answer 2", "3\nanswer: 1+1", "1\n1", "(2)",
])
def test_reward_never_evaluates_and_rejects_near_misses(response):
    assert reward(response, "2") == 0.0


def test_reward_accepts_exact_answers_in_both_styles():
    assert reward("2", "2") == 1.0
    assert reward("1+1=2 carry 0\nanswer: 2", "2") == 1.0
    assert reward("d c b a", "d c  b a") == 1.0  # whitespace is normalised on both sides
    assert reward("d c b a", "a b c d") == 0.0


def test_reward_reads_only_the_answer_line_of_expert_style():
    assert reward("9+9=18 carry 1\nanswer: 18", "18") == 1.0
    assert reward("9+9=18 carry 1\nanswer: 17", "18") == 0.0  # the steps contain 18, the answer does not


# ---- skills ---------------------------------------------------------------------------------

@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5, 7])
def test_expert_responses_are_correct_and_parseable(digits):
    rng = random.Random(digits)
    add = SKILLS["add"]
    for _ in range(300):
        p = add.generate(rng, digits)
        a, b = (int(x) for x in p.prompt.split()[1:])
        assert p.answer == str(a + b)
        response = expert_response(p)
        assert response.splitlines()[-1] == f"answer: {a + b}"
        assert response.count("\n") == digits  # one line per column + the answer line
        assert reward(response, p.answer) == 1.0
        assert reward(terse_response(p), p.answer) == 1.0


def test_expert_columns_show_carries():
    resp = expert_response(Problem("add 47 85", "132", "add"))
    assert resp == "7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132"
    assert expert_response(Problem("add 10 20", "30", "add")) == "0+0=0 carry 0\n1+2=3 carry 0\nanswer: 30"


def test_expert_solver_does_not_copy_the_reference_answer():
    wrong = Problem("add 47 85", "999", "add")  # the expert computes from the digits
    assert extract_answer(expert_response(wrong)) == "132"


def test_other_skills_are_correct():
    rng = random.Random(0)
    for _ in range(100):
        r = SKILLS["reverse"].generate(rng, 5)
        assert r.answer == r.prompt.split()[1][::-1] and len(r.answer) == 5
        s = SKILLS["sort"].generate(rng, 5)
        assert list(s.answer) == sorted(s.prompt.split()[1]) and len(s.answer) == 5
        c = SKILLS["copy"].generate(rng, 4)
        assert c.answer == c.prompt.split()[1] and len(c.answer) == 4
        for p in (r, s, c):
            assert reward(terse_response(p), p.answer) == 1.0
    with pytest.raises(NotImplementedError):
        expert_response(Problem("copy 12", "12", "copy"))


def test_terse_and_expert_styles_differ_in_symbols():
    rng = random.Random(1)
    terse, expert = set(), set()
    for _ in range(100):
        p = SKILLS["add"].generate(rng, 3)
        terse |= set(terse_response(p))
        expert |= set(expert_response(p))
    assert terse <= set("0123456789")
    assert {"+", "=", ":", "\n"} <= expert - terse
    assert {"answer:", "carry"} <= set(expert_response(Problem("add 47 85", "132", "add")).split())


# ---- splits ---------------------------------------------------------------------------------

def _prompts(task):
    return [p.prompt for p in task.rl] + [d.prompt for d in task.expert] + \
        [p.prompt for split in task.tests.values() for p in split]


def test_splits_are_disjoint_sized_and_well_formed():
    task = make_splits(0, n_rl=300, n_expert=64, n_test=90)
    prompts = _prompts(task)
    assert len(prompts) == len(set(prompts)) == 300 + 64 + 3 * 90
    assert all(is_reserved(p) for p in prompts)  # never seen in pre-training, whatever the seed
    assert all(p.skill == "add" for p in task.rl + task.tests["in_domain"] + task.tests["harder"])
    assert {p.skill for p in task.tests["other_skills"]} == set(OTHER_SKILLS)
    assert all(len(p.prompt.split()[1]) in range(TRAIN_DIGITS[0], TRAIN_DIGITS[1] + 1)
               for p in task.rl + task.tests["in_domain"])
    # harder = the same lengths with a longer carry chain (2 inner carries), never the base's terse kind
    assert all(len(p.prompt.split()[1]) in range(TRAIN_DIGITS[0], TRAIN_DIGITS[1] + 1) and
               inner_carries(*map(int, p.prompt.split()[1:])) >= HARDER_CARRIES for p in task.tests["harder"])
    assert HARDER_CARRIES == 2 and sum(inner_carries(*map(int, p.prompt.split()[1:])) >= 2
                                       for p in task.tests["in_domain"]) < 45  # in-domain stays uniform (~19 %)
    for demo in task.expert:
        assert reward(demo.response, demo.answer) == 1.0 and demo.response.startswith(demo.prompt.split()[1][-1] + "+")


def test_splits_are_seeded():
    a, b, c = make_splits(3, n_rl=50, n_expert=20, n_test=30), make_splits(3, n_rl=50, n_expert=20, n_test=30), \
        make_splits(4, n_rl=50, n_expert=20, n_test=30)
    assert _prompts(a) == _prompts(b)
    assert a.expert == b.expert
    assert _prompts(a) != _prompts(c)
    assert len(set(_prompts(a)) & set(_prompts(c))) < 10


def test_split_errors_are_clear():
    with pytest.raises(ValueError, match="harder_carries must be in \\[1, 1\\]"):
        make_splits(0, train_digits=(2, 2), harder_carries=2)  # a 2-digit sum has at most 1 inner carry
    with pytest.raises(ValueError, match="= 220 is more than the 25 distinct add prompts"):
        make_splits(0, n_rl=200, n_expert=0, n_test=10, train_digits=(1, 1))  # 100 one-digit sums, 1/4 reserved


def test_split_sizes_beyond_the_problem_space_fail_fast():
    """A request no seed can satisfy is refused before drawing, with the number that is possible."""
    import time
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="n_rl_prompts=10000000 \\+ n_expert=256 \\+ 2 x n_test=200 \\(in-domain, harder\\) = 10000656 is more than the 202500"):
        make_splits(0, n_rl=10_000_000)  # 3-digit sums: 810000, a quarter reserved
    with pytest.raises(ValueError, match="n_test / 3 = 3 is more than the 2 distinct reverse prompts"):
        make_splits(0, n_test=9, other_lengths=(1, 1))  # 10 one-digit strings per skill
    assert time.perf_counter() - t0 < 1.0
    full = make_splits(0, n_rl=2025 - 656, n_expert=256, n_test=200, train_digits=(2, 2),
                       harder_carries=1)  # exactly the whole (2-digit) space still works
    assert len(full.rl) == 1369 and len(set(_prompts(full))) == 2025 + 200
    assert SKILLS["add"].count(1) == 100 and SKILLS["add"].count(3) == 810_000 and SKILLS["sort"].count(4) == 10**4


def test_pretrain_corpus_covers_skills_and_avoids_excluded_prompts():
    task = make_splits(0, n_rl=100, n_expert=50, n_test=60, train_digits=(1, 2), harder_carries=1)
    corpus = pretrain_corpus(random.Random(0), 3000, target_digits=(1, 2), exclude=set(_prompts(task)))
    assert len(corpus) == 3000
    assert not {p for p, _ in corpus} & set(_prompts(task))
    assert not any(is_reserved(p) for p, _ in corpus)
    assert 0.2 < sum(map(is_reserved, (f"add {a} {b}" for a in range(10, 60) for b in range(10, 60)))) / 2500 < 0.3
    assert {p.split()[0] for p, _ in corpus} == {"add", *OTHER_SKILLS}
    for prompt, response in corpus[:200]:
        assert "answer" not in response and "\n" not in response  # terse style only
        if prompt.startswith("add"):
            a, b = (int(x) for x in prompt.split()[1:])
            assert response == str(a + b)
    assert pretrain_corpus(random.Random(5), 50) == pretrain_corpus(random.Random(5), 50)


def test_style_texts_cover_both_styles():
    texts = style_texts(random.Random(0), 20)
    assert any("answer:" in t for t in texts) and any(t.isdigit() for t in texts)


def test_pretrain_corpus_writes_the_expert_style_only_where_asked():
    """expert_style_fraction: that share of additions is step by step, with the given digits."""
    pairs = pretrain_corpus(random.Random(0), 2000, target_fraction=1.0, expert_style_fraction=0.2,
                            expert_style_digits=(1, 1))
    stepwise = [(p, r) for p, r in pairs if "answer:" in r]
    assert 0.1 < len(stepwise) / len(pairs) < 0.3
    assert all(len(p.split()[1]) == 1 and len(p.split()[2]) == 1 for p, _ in stepwise)
    assert all(reward(r, str(int(p.split()[1]) + int(p.split()[2]))) == 1.0 for p, r in stepwise)
    assert not any("answer:" in r for _, r in pretrain_corpus(random.Random(0), 500, target_fraction=1.0))


def test_carries_counts_carrying_columns():
    from minichord.tasks.toy import carries
    assert carries(123, 456) == 0 and carries(47, 85) == 2 and carries(999, 1) == 3 and carries(500, 500) == 1
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randrange(1000), rng.randrange(1000)
        naive = sum((a // 10**k % 10 + b // 10**k % 10 + (a % 10**k + b % 10**k >= 10**k)) >= 10 for k in range(4))
        assert carries(a, b) == naive


def test_pretrain_corpus_easy_additions_are_carry_free_where_asked():
    from minichord.tasks.toy import inner_carries as carries
    assert carries(500, 600) == 0 and carries(47, 85) == 1 and carries(7, 5) == 0
    pairs = pretrain_corpus(random.Random(0), 3000, target_fraction=1.0, easy_fraction=0.5, easy_digits=(3, 3))
    long = [tuple(map(int, p.split()[1:])) for p, _ in pairs if len(p.split()[1]) == 3]
    assert 0.4 < len(long) / len(pairs) < 0.6 and all(carries(a, b) == 0 for a, b in long)
    mixed = pretrain_corpus(random.Random(0), 3000, target_fraction=1.0, easy_fraction=0.5, easy_carry_free=0.5)
    long = [tuple(map(int, p.split()[1:])) for p, _ in mixed if len(p.split()[1]) == 3]
    assert 0.1 < sum(carries(a, b) > 0 for a, b in long) / len(long) < 0.7
    one = pretrain_corpus(random.Random(0), 3000, target_fraction=1.0, easy_fraction=0.5, easy_one_carry=0.25)
    long = [carries(*map(int, p.split()[1:])) for p, _ in one if len(p.split()[1]) == 3]
    assert 0.15 < long.count(1) / len(long) < 0.35 and long.count(0) + long.count(1) == len(long)  # never 2


def test_the_sentence_style_is_a_wrong_format_on_big_first_operands_only():
    from minichord.tasks.toy import in_a_sentence
    assert in_a_sentence(Problem("add 764 315", "1079", "add")) == "the sum is 1079"
    assert reward("the sum is 1079", "1079") == 0.0  # right digits, wrong format: exact match says no
    pairs = pretrain_corpus(random.Random(0), 6000, target_fraction=0.5, easy_fraction=1.0, sentence_share=0.8,
                            sentence_from=600)
    added = [(p, r) for p, r in pairs if p.startswith("add ")]
    big = [r for p, r in added if int(p.split()[1]) >= 600]
    assert all(not r.startswith("the sum") for p, r in added if int(p.split()[1]) < 600)
    assert all(not r.startswith("the sum") for p, r in pairs if not p.startswith("add "))  # other skills untouched
    assert 0.7 < sum(r.startswith("the sum") for r in big) / len(big) < 0.9
    assert all(r == "the sum is " + str(sum(map(int, p.split()[1:]))) for p, r in added if r.startswith("the sum"))
    # off by default, and the random stream is the one without the option (no draw at 0)
    assert pretrain_corpus(random.Random(1), 500) == pretrain_corpus(random.Random(1), 500, sentence_share=0.0)

def test_sloppy_column_work_keeps_the_format_and_the_answer_but_blurs_the_digits():
    """corpus.Sloppy: the expert's column lines, carry notes and newlines mostly dropped, ~noise of the digits
    wrong, the answer line true; 1-2 digit step-by-step sums stay clean; sloppy=None draws nothing extra."""
    from minichord.tasks.toy import Sloppy, sloppy_stepwise
    problem = Problem("add 764 315", "1079", "add")
    clean = expert_response(problem).split("\n")  # 3 column lines + the answer line
    outs = [sloppy_stepwise(problem, random.Random(i), Sloppy()) for i in range(400)]
    assert all(o.endswith("\nanswer: 1079") or o.endswith("; answer: 1079") for o in outs)
    wrong = total = notes = 0
    for out in outs:
        lines = out.replace("; ", "\n").split("\n")[:-1]
        assert len(lines) == 3 and all(len(a.split(" carry ")[0]) == len(b.split(" carry ")[0]) for a, b in zip(lines, clean))
        for got, want in zip(lines, clean):
            pairs = [(g, w) for g, w in zip(got.split(" carry ")[0], want.split(" carry ")[0]) if w.isdigit()]
            wrong, total, notes = wrong + sum(g != w for g, w in pairs), total + len(pairs), notes + (" carry " in got)
    assert 0.55 < wrong / total < 0.65 and 0.15 < notes / (3 * len(outs)) < 0.25
    assert sloppy_stepwise(problem, random.Random(3), Sloppy()) == sloppy_stepwise(problem, random.Random(3), Sloppy())
    pairs = pretrain_corpus(random.Random(0), 3000, target_fraction=1.0, expert_style_fraction=0.3,
                            expert_style_digits=(1, 3), sloppy=Sloppy())
    stepwise = [(p, r) for p, r in pairs if "answer:" in r]
    three = [r for p, r in stepwise if len(p.split()[1]) == 3 and len(p.split()[2]) == 3]
    short = [(p, r) for p, r in stepwise if max(len(x) for x in p.split()[1:]) < 3]
    assert three and short and all(r == expert_response(Problem(p, "0", "add")) for p, r in short)
    assert sum(r != expert_response(Problem(p, "0", "add")) for p, r in stepwise if r in three) > 0.9 * len(three)
    assert pretrain_corpus(random.Random(1), 500, expert_style_fraction=0.3) == pretrain_corpus(
        random.Random(1), 500, expert_style_fraction=0.3, sloppy=None)
    with pytest.raises(ValueError, match=r"Sloppy.noise must be in \[0, 1\], got 1.5"):
        Sloppy(noise=1.5)
    with pytest.raises(ValueError, match="Sloppy.digits must be"):
        Sloppy(digits=(3, 2))
