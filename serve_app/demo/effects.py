"""How each demo text adapter's effect is measured on held-out prompts (no model here: functions
of the answer texts). ``python -m serve_app.demo.train`` reports these scores and
tests/real/test_real_model.py asserts the thresholds on what vLLM serves.

Each score is the fraction of answers that show the adapter's behaviour; ``THRESHOLDS`` names the
least an adapter must reach and the most the base model may reach on the same prompts.
"""

import re

PIRATE_WORDS = {"arr", "matey", "mateys", "ahoy", "ye", "yer", "aye", "hearty", "savvy", "yo"}
FRENCH_WORDS = {
    "le", "la", "les", "des", "un", "une", "de", "en", "est", "et", "du", "pour", "dans", "avec",
    "qui", "sont",
    "au", "aux", "sur", "leur", "leurs", "par", "ce", "cette", "il", "elle", "nous", "vous",
}  # fmt: skip
ENGLISH_WORDS = {"the", "and", "is", "are", "of", "to", "with", "for", "that", "this", "it"}

# adapter -> (held-out prompt set, least adapter score, most base score)
THRESHOLDS: dict[str, tuple[str, float, float]] = {
    "pirate": ("general", 0.8, 0.05),
    "french": ("general", 0.8, 0.05),
    "sql": ("sql", 0.8, 0.05),
    "short": ("general", 0.8, 0.2),
}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-zà-ÿœ']+", text.lower())


def is_pirate(text: str) -> bool:
    """At least one pirate word (arr, matey, ahoy, ye, aye, ...)."""
    return any(w.strip("'") in PIRATE_WORDS for w in _words(text))


def is_french(text: str) -> bool:
    """More French function words than English ones, and at least two of them."""
    words = [w.split("'")[-1] for w in _words(text)]
    fr = sum(w in FRENCH_WORDS for w in words)
    en = sum(w in ENGLISH_WORDS for w in words)
    return fr >= 2 and fr > en


def is_sql(text: str) -> bool:
    """The answer is a query: it starts with SELECT and has a FROM."""
    return bool(re.match(r"\s*(```(sql)?\s*)?SELECT\b.*\bFROM\b", text, re.S | re.I))


def is_short(text: str, finished: bool = True) -> bool:
    """One sentence of at most 20 words, and the model ended it itself (not cut at max_tokens)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    return finished and len(sentences) == 1 and len(text.split()) <= 20


def score(adapter: str, answers: list[tuple[str, bool]]) -> float:
    """Fraction of ``(text, finished)`` answers showing ``adapter``'s behaviour."""
    check = {"pirate": is_pirate, "french": is_french, "sql": is_sql}.get(adapter)
    hits = [is_short(t, f) if check is None else check(t) for t, f in answers]
    return sum(hits) / len(hits)
