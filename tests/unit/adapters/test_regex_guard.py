"""Hostile adapter configs: regexes that would backtrack for hours are refused at once, and every
field of adapter_config.json is type-checked (a wrong type is an InvalidAdapterError, not a crash).
"""

import json
import shutil
import time

import pytest

from adapters.errors import InvalidAdapterError
from adapters.regex_guard import UnsafeRegexError, safe_compile
from adapters.spec import AdapterSpec
from adapters.validate import ValidationRules, validate_text_lora

RULES = ValidationRules(max_rank=16)


@pytest.mark.parametrize(
    ("pattern", "rule"),
    [
        (r"(\w|\w)*\.X", "repeats an alternation"),
        (r"(a|ab)*c", "repeats an alternation"),
        (r"(\w+)*X", "nests a quantifier"),
        (r"(?:a{2,5}){3,}", "nests a quantifier"),
        (r"(?=(a+)+)b", "nests a quantifier"),
        (r"(.*)\1", "backreference"),
        (r"(?P<x>a)(?(x)b|c)", "backreference"),
        (r".*.*.*.*X", "4 repeated parts"),
        ("a" * 300, "300 characters"),
        ("(", "not a valid regular expression"),
        ("[a-", "not a valid regular expression"),
    ],
)
def test_unsafe_regexes_are_refused_naming_the_rule(pattern, rule):
    with pytest.raises(UnsafeRegexError, match=rule):
        safe_compile(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r".*\.(q_proj|v_proj)",
        r"^(?!.*vision).*\.q_proj$",
        r".*decoder.*(SelfAttention|EncDecAttention).*(q|k|v|o)$",
        r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj",
        r"(.*\.)?(?:q_proj)$",
    ],
)
def test_real_peft_regexes_pass(pattern):
    assert safe_compile(pattern).pattern == pattern


def _with_config(good, tmp_path, name, **changes):
    path = shutil.copytree(good, tmp_path / name)
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return AdapterSpec(name=name, source=str(path)), path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_modules": r"(\w|\w)*\.X"}, "target_modules: regex"),
        ({"rank_pattern": {r"(\w|\w)*\.X": 8}}, "rank_pattern[(\\w|\\w)*\\.X]: regex"),
        ({"alpha_pattern": {r"(a+)+": 8}}, "alpha_pattern[(a+)+]: regex"),
        ({"exclude_modules": r"(x|xx)*y"}, "exclude_modules: regex"),
        ({"layers_pattern": r"(\d+)*"}, "layers_pattern[0]: regex"),
        ({"rank_pattern": {"q_proj": "8"}}, "field 'rank_pattern'"),
        ({"rank_pattern": {"q_proj": 8.5}}, "field 'rank_pattern'"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern values"),
        ({"rank_pattern": [1, 2]}, "field 'rank_pattern'"),
        ({"rank_pattern": {f"m{i}": 8 for i in range(40)}}, "field 'rank_pattern'"),
        ({"target_modules": [1, 2]}, "field 'target_modules'"),
        ({"target_modules": {"q_proj": 1}}, "field 'target_modules'"),
        ({"lora_alpha": "sixteen"}, "field 'lora_alpha'"),
        ({"use_dora": "yes"}, "field 'use_dora'"),
        ({"base_model_name_or_path": ["a"]}, "field 'base_model_name_or_path'"),
        ({"modules_to_save": "lm_head"}, "field 'modules_to_save'"),
        ({"layers_to_transform": "0"}, "field 'layers_to_transform'"),
        ({"r": 8.0}, "is not a positive integer"),
        ({"r": True}, "is not a positive integer"),
    ],
)
def test_hostile_adapter_configs_are_refused(tiny_base, tmp_path, changes, message):
    good, base = tiny_base
    spec, path = _with_config(good, tmp_path, "hostile", **changes)
    start = time.perf_counter()
    with pytest.raises(InvalidAdapterError) as info:
        validate_text_lora(spec, path, base, RULES)
    elapsed = time.perf_counter() - start
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("adapter 'hostile': ")
    assert elapsed < 1.0, elapsed  # the bound: refused within 1 s, not after hours


def test_rank_pattern_regex_keys_still_apply(tiny_base, tmp_path):
    good, base = tiny_base
    spec, path = _with_config(good, tmp_path, "pattern", rank_pattern={r"v_pr.j": 4})
    with pytest.raises(InvalidAdapterError, match="has rank 8, but adapter_config.json says r=4"):
        validate_text_lora(spec, path, base, RULES)
