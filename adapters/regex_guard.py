"""Regexes that come from adapter files (PEFT's ``target_modules`` as a string, the keys of
``rank_pattern`` / ``alpha_pattern``, ``exclude_modules``, ``layers_pattern``) are untrusted
input. Python's ``re`` backtracks and holds the GIL, so ``(\\w|\\w)*\\.X`` on a 25-character module
name takes seconds and on real names hours, freezing the replica. ``safe_compile`` compiles a
pattern only if its structure bounds matching time: short; no backreferences; no quantifier
inside a quantifier; no alternation inside a quantifier; at most ``max_repeats`` repeats
(then matching is polynomial of a low degree in the name length, which is at most a few hundred
characters). Real PEFT configs (``.*\\.(q_proj|v_proj)``, ``^(?!.*vision).*\\.q_proj$``) pass.
"""

import re

try:  # Python 3.11+: the parser's modules are private; 3.10 names them sre_*
    from re import _constants as _c
    from re import _parser as _p
except ImportError:  # pragma: no cover
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

MAX_LENGTH = 256
MAX_REPEATS = 3

_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT)}
_REFS = {_c.GROUPREF, _c.GROUPREF_EXISTS}


class UnsafeRegexError(ValueError):
    """A regex that could take unbounded time to match; the message names the rule."""


def safe_compile(
    pattern: str, *, max_length: int = MAX_LENGTH, max_repeats: int = MAX_REPEATS
) -> re.Pattern[str]:
    """``re.compile(pattern)`` if the pattern is structurally safe, else UnsafeRegexError."""
    if not isinstance(pattern, str):
        raise UnsafeRegexError(f"must be a string, not {type(pattern).__name__}")
    if len(pattern) > max_length:
        raise UnsafeRegexError(f"is {len(pattern)} characters long; at most {max_length}")
    try:
        tree = _p.parse(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise UnsafeRegexError(f"is not a valid regular expression ({e})") from None
    repeats = _walk(tree, inside_repeat=False)
    if repeats > max_repeats:
        raise UnsafeRegexError(f"has {repeats} repeated parts; at most {max_repeats} are allowed")
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:  # pragma: no cover (parse caught it)
        raise UnsafeRegexError(f"is not a valid regular expression ({e})") from None


def _walk(items: object, inside_repeat: bool) -> int:
    """Count repeats in a parsed pattern; raise on the constructs that backtrack without bound."""
    count = 0
    for op, av in items:  # type: ignore[attr-defined]
        if op in _REFS:
            raise UnsafeRegexError("uses a backreference, which is not allowed")
        if op in _REPEATS:
            low, high, sub = av
            unbounded = high is _c.MAXREPEAT or high > 1
            if unbounded and inside_repeat:
                raise UnsafeRegexError("nests a quantifier inside a quantifier (e.g. '(a+)*')")
            if unbounded and _has_branch(sub):
                raise UnsafeRegexError("repeats an alternation (e.g. '(a|b)*'), which is refused")
            count += int(unbounded) + _walk(sub, inside_repeat or unbounded)
        elif op is _c.BRANCH:
            count += sum(_walk(branch, inside_repeat) for branch in av[1])
        elif op is _c.SUBPATTERN:
            count += _walk(av[-1], inside_repeat)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            count += _walk(av[1], inside_repeat)
        elif op is getattr(_c, "ATOMIC_GROUP", None):
            count += _walk(av, inside_repeat)
    return count


def _has_branch(items: object) -> bool:
    for op, av in items:  # type: ignore[attr-defined]
        if op is _c.BRANCH:
            return True
        if op is _c.SUBPATTERN and _has_branch(av[-1]):
            return True
        if op in (_c.ASSERT, _c.ASSERT_NOT) and _has_branch(av[1]):
            return True
    return False
