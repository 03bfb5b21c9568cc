"""The demo adapters' effect measures (serve_app.demo.effects) tell their training answers apart:
every answer an adapter was trained on shows its behaviour, and plain English answers do not."""

from serve_app.demo.effects import score
from serve_app.demo.train_data import QA, SQL_HELD_OUT, datasets


def test_each_adapters_training_answers_score_fully():
    for name, pairs in datasets().items():
        assert score(name, [(a, True) for _, a in pairs]) == 1.0, name


def test_plain_english_answers_do_not_count_as_pirate_french_or_sql():
    english = [(en, True) for _, en, _ in QA]
    for name in ("pirate", "french", "sql"):
        assert score(name, english) == 0.0, name


def test_a_cut_or_long_answer_is_not_short():
    long = "Sleep helps. It also repairs the body."
    assert score("short", [(long, True), ("One short sentence.", False)]) == 0.0


def test_held_out_sql_questions_are_not_in_the_training_set():
    trained = {q for q, _ in datasets()["sql"]}
    assert not trained & set(SQL_HELD_OUT)
