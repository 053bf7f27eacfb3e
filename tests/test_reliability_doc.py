"""docs/reliability.md names a test for every row: each one must exist (a renamed or deleted
test would leave a row unchecked), and the closing note states the row count."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_row_names_an_existing_test():
    text = open(os.path.join(REPO, "docs", "reliability.md")).read()
    rows = re.findall(r"^\| (\d+) \|.*`(tests/[\w/]+\.py)::(\w+)` \|$", text, flags=re.M)
    assert [int(number) for number, _, _ in rows] == list(range(1, len(rows) + 1))
    assert f"The table has {len(rows)} rows." in text
    for _, path, name in rows:
        source = open(os.path.join(REPO, path)).read()
        assert re.search(rf"^def {name}\(", source, flags=re.M), f"{path}::{name} (docs/reliability.md) does not exist"
