"""Property-based tests of what users write by hand: annotation tables and configs.

Random tables (bytes, encodings, ragged rows, quotes, huge numbers, negative frames, unicode names) either
parse or end in ferseq's own error naming the file and the line, or the row and column; random config
values either pass or end in one message naming each key. Never a traceback.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import CLASSES, DEMO, REPO, SCHEMAS
from ferseq.common import config as config_check
from ferseq.common.errors import ConfigError
from ferseq.data.annotations import REQUIRED, AnnotationError, load_segments, read_table

VIDEOS = ["woman_sad_to_happy.mp4", "man_neutral_to_happy.mp4", "man_after_title.mov", "missing.mp4"]
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
numbers = st.one_of(st.integers(-10**30, 10**30), st.integers(-5, 500)).map(str)
cells = st.one_of(texts, numbers, st.sampled_from(VIDEOS + CLASSES["names"] + ["", " ", '"', '""', ",", "\n",
                                                                             "12.5", "1e9", "NaN", "-0", "０"]))
headers = st.one_of(
    st.permutations(list(REQUIRED) + ["group"]).map(list),
    st.lists(st.one_of(st.sampled_from(list(REQUIRED) + ["group", "fold", "split"]), texts), max_size=8))


def csv_line(fields: list[str], quote: bool) -> str:
    if not quote:
        return ",".join(fields)
    return ",".join('"' + f.replace('"', '""') + '"' for f in fields)


# a row that is nearly right: a demo video (or a missing one), a subject, a class, frames near the videos' lengths
near_rows = st.tuples(st.sampled_from(VIDEOS), st.sampled_from(["p1", "p2", "Zoë", "李", " p3 "]),
                      st.sampled_from(CLASSES["names"]), st.integers(-1, 300), st.integers(-1, 80),
                      st.sampled_from(["", "uk", "日本"])).map(
    lambda r: [r[0], r[1], r[2], str(r[3]), str(r[3] + r[4]), r[5]])


@st.composite
def tables(draw) -> bytes:
    """A CSV as a spreadsheet, a script or a careless hand might write it, as bytes."""
    careless = draw(st.booleans())
    if careless:
        header = draw(headers)
        rows = draw(st.lists(st.lists(cells, min_size=max(0, len(header) - 2), max_size=len(header) + 2), max_size=6))
    else:
        header, rows = list(REQUIRED) + ["group"], draw(st.lists(near_rows, min_size=1, max_size=4))
    quote = draw(st.booleans())
    text = "\n".join(csv_line(fields, quote and draw(st.booleans())) for fields in [header, *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"] if careless else ["utf-8", "utf-8-sig"]))
    data = text.encode(encoding, errors="replace")
    if careless and draw(st.booleans()):  # damage: a few bytes replaced anywhere
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, max(0, len(data) - 1)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at + 1:]
    return data


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tables())
def test_a_random_annotation_table_parses_or_is_reported_by_file_line_row_and_column(data, tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_bytes(data)
    try:
        table = read_table(path)
    except AnnotationError as err:  # a problem of the file: named by its line
        message = str(err)
        assert message.startswith(str(path)) and (re.search(r"line \d+", message) or "empty" in message
                                                  or "missing column" in message), message
        return
    try:
        load_segments(path, DEMO / "videos", CLASSES, SCHEMAS / "annotations.schema.yaml", count_frames="header")
    except AnnotationError as err:  # a problem of rows: named by row and column
        message = str(err)
        assert message.startswith(str(path)), message
        problems = [line.strip() for line in message.splitlines()[1:] if line.startswith("  ")]
        assert problems or "no segment is left" in message or "would share the output name" in message, message
        for line in problems:
            if not line.startswith("row "):  # the fixes listed after "no segment is left" are rows too
                continue
            row = int(re.match(r"row (\d+)", line).group(1))
            assert 1 <= row <= len(table), line
            assert re.match(r"row \d+(, column [^:]+)?: ", line), line


# A config is the demo's with a few values replaced by anything a YAML file can hold.
DEMO_CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
KEYS = [(section, key) for section, values in DEMO_CONFIG.items() if isinstance(values, dict) for key in values]
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3),
       extra=st.one_of(st.none(), st.tuples(texts, values)))
# Always tried besides the random ones: a schema problem, an unknown top-level key, and cross-key problems.
@example(changes=[(("data", "videos"), None)], extra=("strcit", 1))
@example(changes=[(("data", "videos"), "no/such/folder"), (("windows", "length"), 16)], extra=None)
@example(changes=[(("classes", "map"), {"joy": "glad"})], extra=None)
def test_a_random_config_value_passes_or_is_named_by_its_key(changes, extra):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = copy.deepcopy(DEMO_CONFIG)
    config["data"]["videos"], config["data"]["annotations"] = str(DEMO / "videos"), str(DEMO / "annotations.csv")
    for (section, key), value in changes:
        config[section][key] = value
    if extra:
        config[extra[0] or "_"] = extra[1]
    # The demo config is valid: every problem is one of the keys changed here, and each line must name it.
    changed = [f"{section}.{key}" for (section, key), _ in changes if not (extra and (extra[0] or "_") == section)]
    added = [extra[0] or "_"] if extra else []
    try:
        validate(config, str(SCHEMAS / "config.schema.yaml"))  # as workflow/rules/common.smk validates it
    except WorkflowError:
        message = config_check.explain(config, SCHEMAS / "config.schema.yaml")
        lines = message.splitlines()
        assert lines[0].startswith("config problems") and len(lines) > 1, message
        assert all(re.match(r"  [^:]+: ", line) for line in lines[1:] if line.startswith("  ")), message
        problems = [line for line in lines[1:] if line.startswith("  ")]
        assert problems, message
        for line in problems:
            assert names_a_changed_key(line, changed, added, schema=True), (line, changed, added)
        return
    try:
        config_check.check(config)
    except ConfigError as err:
        lines = str(err).splitlines()[1:]
        assert lines, str(err)
        for line in lines:
            assert re.match(r"  [a-z_]+(\.[^:]+)*[: ]", line), str(err)
            assert names_a_changed_key(line, changed, added, schema=False), (line, changed, added)


def names_a_changed_key(line: str, changed: list[str], added: list[str], schema: bool) -> bool:
    """Whether a problem line names one of the ``changed`` keys (section.key) or ``added`` top-level keys.

    A schema line starts with the key's path (``section.key``, ``section.key.0``...); a top-level key that the
    schema does not know is named in ``(top level): Additional properties ... ('name' was unexpected)``. A
    cross-key line of ``check`` names the changed key, at its start or in its text (``classes.map.x: ... not one
    of classes.names``).
    """
    text = line[2:]
    for key in changed + [config_check._part(name) for name in added]:
        if re.match(re.escape(key) + r"[.: ]", text):
            return True
        if not schema and key in changed and key in text:
            return True
    return any(text.startswith("(top level): ") and f"{name!r} was unexpected" in text for name in added)


@pytest.mark.parametrize("data", [b"\xff\xfe" + "video,subject\n".encode("utf-16-le"), b"\x00" * 40, b'"\n' * 3])
def test_tables_that_are_not_text_are_named_by_line(data, tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_bytes(data)
    with pytest.raises(AnnotationError, match=re.escape(str(path))):
        read_table(path)
