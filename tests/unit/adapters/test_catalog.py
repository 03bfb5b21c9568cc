"""The typed catalogue: what ingress and followers read from it, its one "does not exist"
message, and that it crosses actor boundaries (pickle) unchanged."""

import pickle

import pytest

from adapters.catalog import BaseEntry, Catalog
from adapters.errors import UnknownModelError
from adapters.ids import resolve
from adapters.spec import AdapterSpec

CAT = Catalog(
    version=7,
    bases={
        "b": BaseEntry(
            kind="text", root="/m", adapters={"a": AdapterSpec(name="a", source="/a", version=3)}
        ),
        "img": BaseEntry(kind="image", root="/sd"),
    },
)


def test_reads():
    assert CAT.names() == {"b": ["a"], "img": []}
    assert resolve("a", CAT.names()).base == "b"
    assert CAT.adapter("b", "a").version == 3
    assert CAT.adapters("gone") == {}
    assert pickle.loads(pickle.dumps(CAT)) == CAT


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: CAT.adapter("b", "x"), "The model 'b:x' does not exist."),
        (lambda: CAT.base("nope"), "The model 'nope' does not exist."),
        (lambda: resolve("b:x", CAT.names()), "The model 'b:x' does not exist (no adapter"),
    ],
)
def test_unknown_names_say_so_in_one_wording(call, message):
    with pytest.raises(UnknownModelError) as info:
        call()
    assert str(info.value).startswith(message)
