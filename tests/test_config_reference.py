"""docs/config.md is what scripts/make_config_reference.py makes from the settings in the code, and it
covers every key: a changed default, comment or check, or a new key, without re-running the script fails here."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from helpers import shipped_config

from scripts.make_config_reference import FILE, field_meaning, text


def test_reference_is_current():
    assert FILE.read_text() == text(), "docs/config.md is stale: run `python scripts/make_config_reference.py`"


def test_reference_names_every_key_of_the_shipped_config():
    made = text()
    for table, keys in shipped_config().items():
        assert f"## [{table}]" in made or f"## [[{table}]]" in made, table
        for entry in keys if isinstance(keys, list) else [keys]:
            for key in entry:
                assert f"| `{key}` |" in made, f"[{table}] {key}"


@dataclass
class _Documented:
    plain: int = 1  # a plain key
    # a comment on its own line introduces what follows; it is no key's meaning
    bare: bool = False


def test_meaning_is_the_comment_beside_a_field_and_one_is_required():
    assert field_meaning(_Documented, "plain") == "a plain key"
    with pytest.raises(SystemExit, match="_Documented.bare has no comment"):
        field_meaning(_Documented, "bare")
