"""kgface.data.manifest: round trip, every bad-row kind with its message, skip mode, paths that escape the root."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from PIL import Image

from kgface.data.manifest import COLUMNS, GENERATED_COLUMNS, ManifestError, read_manifest, write_manifest


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / name)
    return tmp_path


def _row(**kw):
    row = {"path": "images/a.png", "identity": "p1", "disease": "ORPHA:870", "stage": 1, "severity": 1.25,
           "lesion_count": "", "split": "train", "source": "test", "phenotypes": {"HP:0000494": 0.5}}
    row.update(kw)
    return row


def test_round_trip_keeps_values_and_types(root):
    rows = [_row(), _row(path="images/b.png", identity="", disease="healthy", stage=0, severity="", split="val",
                         phenotypes={}),
            _row(path="images/c.png", identity="p3", disease="MONDO:0011438", stage=3, severity=2.9, lesion_count=64,
                 split="test", phenotypes="{}", age_group="adult")]
    path = write_manifest(rows, root / "manifest.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header == COLUMNS                                   # fixed column order, optional ones filled
    df, report = read_manifest(path)
    assert report.rows == 3 and report.skipped == []
    assert df["path"].tolist() == ["images/a.png", "images/b.png", "images/c.png"]
    assert df["stage"].tolist() == [1, 0, 3]
    assert df["severity"].tolist() == [1.25, 0.0, 2.9]         # empty severity defaults to the stage
    assert df["lesion_count"].tolist() == [-1, -1, 64]         # empty = not counted
    assert df["identity"].tolist() == ["p1", "", "p3"]
    assert df["phenotypes"].tolist() == [{"HP:0000494": 0.5}, {}, {}]
    assert df["abspath"].tolist() == [str((root / "images" / n).resolve()) for n in ("a.png", "b.png", "c.png")]
    assert not list(root.glob(".manifest.csv.*"))              # atomic write leaves no temporary file


def test_a_read_frame_filtered_and_written_back_reads_again(root):
    """read_manifest -> filter -> write_manifest: its -1 ("not counted") is written empty again and its abspath
    column (a machine's path) is not written."""
    write_manifest([_row(), _row(path="images/c.png", lesion_count=12, disease="MONDO:0011438")], root / "m.csv")
    df = read_manifest(root / "m.csv")[0]
    write_manifest(df[df["disease"] == "ORPHA:870"], root / "sub.csv")
    assert "abspath" not in (root / "sub.csv").read_text().splitlines()[0].split(",")
    again = read_manifest(root / "sub.csv")[0]
    assert again["lesion_count"].tolist() == [-1] and again["path"].tolist() == ["images/a.png"]
    write_manifest(df, root / "all.csv")
    assert read_manifest(root / "all.csv")[0]["lesion_count"].tolist() == [-1, 12]


def test_generated_columns_pass_through(root):
    extra = {"mode": "text", "requested_disease": "ORPHA:870", "requested_stage": 2, "seed": 7,
             "source_image": "images/b.png"}
    write_manifest([_row(**extra)], root / "gen.csv")
    header = (root / "gen.csv").read_text().splitlines()[0].split(",")
    assert header == COLUMNS + GENERATED_COLUMNS
    df, _ = read_manifest(root / "gen.csv")
    assert df.loc[0, "mode"] == "text" and df.loc[0, "seed"] == "7"


BAD_ROWS = [
    ({"path": ""}, "empty path"),
    ({"path": "../outside.png"}, "escapes the dataset root"),
    ({"path": "images/../../x.png"}, "escapes the dataset root"),
    ({"path": "/etc/passwd"}, "escapes the dataset root"),
    ({"path": "images/missing.png"}, "does not exist"),
    ({"disease": ""}, "empty disease"),
    ({"stage": "x"}, "is not an integer"),
    ({"stage": 4}, "outside 0..3"),
    ({"stage": -1}, "outside 0..3"),
    ({"stage": 1.5}, "outside 0..3"),
    ({"severity": 3.5}, "severity 3.5 is outside"),
    # the prompt reads the stage, the KG tokens the severity: a row whose two disagree trained two stages at once
    ({"stage": 1, "severity": 2.8}, r"severity 2.8 lies in stage 3's bin \[s - 0.5, s \+ 0.5\) but stage is 1"),
    ({"stage": 0, "severity": 1.5}, "severity 1.5 lies in stage 2's bin"),
    ({"disease": "healthy", "stage": 0, "severity": "", "heldout": "true", "phenotypes": "{}"},
     "disease 'healthy' has heldout true; healthy faces are never held out"),
    ({"lesion_count": -2}, "not a non-negative integer"),
    ({"lesion_count": 2.5}, "not a non-negative integer"),
    ({"split": "dev"}, "split 'dev' is not one of train, val, test"),
    ({"phenotypes": "{not json"}, "phenotypes is not JSON"),
    ({"phenotypes": json.dumps({"ORPHA:1": 0.5})}, "must map HP ids"),
    ({"phenotypes": json.dumps({"HP:0000494": 1.5})}, "must map HP ids"),
    # numbers that overflow int() or are not numbers at all: one-line errors, not OverflowError / TypeError
    ({"stage": "inf"}, "stage 'inf' is not an integer"),
    ({"stage": "-inf"}, "stage '-inf' is not an integer"),
    ({"lesion_count": "inf"}, "lesion_count inf is not a non-negative integer"),
    ({"lesion_count": "nan"}, "lesion_count nan is not a non-negative integer"),
    ({"lesion_count": "many"}, "lesion_count many is not a non-negative integer"),
    ({"severity": "high"}, "severity 'high' is not a number"),
    ({"phenotypes": '{"HP:0000494": null}'}, "must map HP ids"),
    ({"phenotypes": '{"HP:0000494": {"x": 1}}'}, "must map HP ids"),
    ({"phenotypes": '{"HP:0000494": [0.5]}'}, "must map HP ids"),
    ({"phenotypes": '{"HP:0000494": true}'}, "must map HP ids"),
    ({"phenotypes": '{"HP:0000494": "0.5"}'}, "must map HP ids"),
    ({"disease": "healthy", "stage": 2, "phenotypes": "{}"}, "disease 'healthy' has stage 2; healthy is stage 0"),
    ({"age_group": "older adult"}, "age_group 'older adult' is not one of child, adolescent, adult, older_adult"),
    ({"age_group": "Adult"}, "age_group 'Adult' is not one of"),
    ({"disease": "Healthy", "stage": 0, "phenotypes": "{}"}, "disease 'Healthy': write healthy faces as 'healthy'"),
    ({"disease": "healthy", "stage": 0, "severity": "", "phenotypes": '{"HP:0000520": 0, "HP:0000494": 0.4}'},
     "disease 'healthy' lists phenotype HP:0000494 at 0.4; healthy faces show none"),
    ({"disease": "healthy", "stage": 0, "severity": 2.5, "phenotypes": "{}"},
     "disease 'healthy' has severity 2.5; healthy is severity 0"),
    # anything but false read as a grade: an ungraded photo written 0 or no would be trained and scored at its stage
    ({"stage_known": "0"}, "stage_known '0' is not true or false"),
    ({"stage_known": "no"}, "stage_known 'no' is not true or false"),
    ({"disease": "healthy", "stage": 0, "severity": "", "stage_known": "False", "phenotypes": "{}"},
     "disease 'healthy' has stage_known false"),
    # a held-out flag other than true / false: 1 or yes read as seen
    ({"heldout": "yes"}, "heldout 'yes' is not true or false"),
    ({"heldout": "1"}, "heldout '1' is not true or false"),
]


@pytest.mark.parametrize("change,message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_each_bad_row_is_an_error_naming_file_and_line(root, change, message):
    write_manifest([_row(path="images/b.png"), _row(**change)], root / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv:3: .*" + message.replace("(", r"\(").replace(".", r"\.")):
        read_manifest(root / "m.csv")


def test_a_short_row_and_a_float_columns_blanks_read_back(root):
    # a CSV row missing its last cells: pandas fills them NaN, and str() made the disease "nan"
    (root / "short.csv").write_text("path,stage,split,disease\nimages/a.png,1,train\n")
    with pytest.raises(ManifestError, match=r"short\.csv:2: .*empty disease"):
        read_manifest(root / "short.csv")
    # a frame whose lesion_count is a float column (ints beside None: -1.0, NaN) and a NaN phenotype set writes
    # what the reader reads (-1.0 and "NaN" were refused)
    frame = pd.DataFrame([_row(lesion_count=12), _row(path="images/b.png", lesion_count=None),
                          _row(path="images/c.png", lesion_count=-1, phenotypes=float("nan"))])
    assert frame["lesion_count"].dtype == float
    df, _ = read_manifest(write_manifest(frame.to_dict("records"), root / "floats.csv"))
    assert df["lesion_count"].tolist() == [12, -1, -1] and df["phenotypes"].tolist()[2] == {}


def test_unknown_disease_only_with_known_labels(root):
    write_manifest([_row(disease="ORPHA:99999")], root / "m.csv")
    assert len(read_manifest(root / "m.csv")[0]) == 1
    with pytest.raises(ManifestError, match=r"m\.csv:2: disease 'ORPHA:99999' is not one of the known labels"):
        read_manifest(root / "m.csv", known_diseases={"ORPHA:870", "healthy"})


def test_a_disease_is_held_out_as_a_whole(root):
    """Evaluation reads a disease as held out when any of its rows says so: a mixed column was read in silence."""
    write_manifest([_row(heldout="true"), _row(path="images/b.png", identity="p2", heldout="false")], root / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv:3: disease 'ORPHA:870' has heldout false here and true on line "
                                            r"2; a disease is held out as a whole"):
        read_manifest(root / "m.csv")


def test_duplicate_path_names_the_first_line(root):
    write_manifest([_row(), _row(path="images/b.png"), _row(stage=2, severity="")], root / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv:4: duplicate path 'images/a\.png' \(first on line 2\)"):
        read_manifest(root / "m.csv")


@pytest.mark.parametrize("spelling", ["./images/a.png", "images//a.png", "images/./a.png"])
def test_duplicate_path_is_found_under_another_spelling(root, spelling):
    write_manifest([_row(), _row(path="images/b.png"), _row(path=spelling)], root / "m.csv")
    with pytest.raises(ManifestError, match=rf"m\.csv:4: duplicate path '{re.escape(spelling)}' \(first on line 2\)"):
        read_manifest(root / "m.csv")


def test_images_that_are_symlinks_out_of_the_root_load(root, tmp_path_factory):
    """The root check is lexical: a dataset folder of links into a shared store loads, its rows pointing at the
    links; two links to one file are one image; an absolute path is taken inside the root, refused outside it."""
    store = tmp_path_factory.mktemp("store")
    Image.new("RGB", (4, 4), "red").save(store / "x.png")
    (root / "images" / "link.png").symlink_to(store / "x.png")
    write_manifest([_row(), _row(path="images/link.png", identity="p2")], root / "m.csv")
    df = read_manifest(root / "m.csv")[0]
    assert df["abspath"].tolist()[1] == str(root.resolve() / "images" / "link.png")
    (root / "images" / "link2.png").symlink_to(store / "x.png")
    write_manifest([_row(path="images/link.png"), _row(path="images/link2.png")], root / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv:3: duplicate path 'images/link2\.png' \(first on line 2\)"):
        read_manifest(root / "m.csv")
    write_manifest([_row(path=str(root.resolve() / "images" / "a.png")), _row(path="images/b.png", identity="p2")],
                   root / "m.csv")
    assert read_manifest(root / "m.csv")[0]["abspath"].tolist()[0] == str(root.resolve() / "images" / "a.png")
    write_manifest([_row(path=str(store / "x.png"))], root / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv:2: path '/.*x\.png' escapes the dataset root"):
        read_manifest(root / "m.csv")


def test_paths_through_a_linked_root_and_folder(root, tmp_path_factory):
    """A root reached through a link takes absolute paths spelled through the link; `..` out of a linked folder
    (the OS would open another file than the lexical reading) and backslashes are refused; 'a:b.png' is a name."""
    link = tmp_path_factory.mktemp("links") / "root"
    link.symlink_to(root)
    write_manifest([_row(path=str(link / "images" / "a.png"))], link / "m.csv")
    assert read_manifest(link / "m.csv")[0]["abspath"].tolist() == [str(root.resolve() / "images" / "a.png")]
    store = tmp_path_factory.mktemp("store")
    (store / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(store / "x.png")
    (root / "linked").symlink_to(store / "sub")
    for path, reason in [("linked/../images/a.png", r"climbs with '\.\.' out of a linked folder"),
                         ("images\\a.png", r"uses '\\'; write paths with '/'")]:
        write_manifest([_row(path=path)], root / "m.csv")
        with pytest.raises(ManifestError, match=r"m\.csv:2: path '.*' " + reason):
            read_manifest(root / "m.csv")
    Image.new("RGB", (4, 4)).save(root / "images" / "a:b.png")
    write_manifest([_row(path="images/../images/a:b.png")], root / "m.csv")  # `..` that stays inside: the same file
    assert read_manifest(root / "m.csv")[0]["abspath"].tolist() == [str(root.resolve() / "images" / "a:b.png")]


def test_one_identity_in_two_splits_is_an_error_naming_both_lines(root):
    rows = [_row(identity="p1"), _row(path="images/b.png", identity="p2", split="val"),
            _row(path="images/c.png", identity="p1", split="test")]
    write_manifest(rows, root / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv:4: identity 'p1' is in test here and in train on line 2"):
        read_manifest(root / "m.csv")
    df, report = read_manifest(root / "m.csv", on_error="skip")       # skip keeps the first split's rows
    assert df["path"].tolist() == ["images/a.png", "images/b.png"] and [ln for ln, _ in report.skipped] == [4]
    # a padded cell is the same person (and the same split): 'p1 ' in test was two people and passed the check
    padded = (root / "m.csv").read_text().replace("images/c.png,p1,", "images/c.png, p1 ,")
    assert " p1 ," in padded
    (root / "m.csv").write_text(padded)
    with pytest.raises(ManifestError, match=r"m\.csv:4: identity 'p1' is in test here and in train on line 2"):
        read_manifest(root / "m.csv")


def test_unknown_identities_and_one_split_per_identity_pass(root):
    rows = [_row(identity=""), _row(path="images/b.png", identity="", split="test"),
            _row(path="images/c.png", identity="p1", stage=3, severity="")]
    write_manifest(rows, root / "m.csv")
    df, report = read_manifest(root / "m.csv")
    assert len(df) == 3 and not report.skipped
    write_manifest([_row(age_group=g, path=f"images/{n}.png") for g, n in (("", "a"), ("older_adult", "b"))],
                   root / "ages.csv")
    assert read_manifest(root / "ages.csv")[0]["age_group"].tolist() == ["", "older_adult"]


def test_skip_mode_counts_and_logs_every_bad_row(root, caplog):
    rows = [_row(), _row(path="../x.png"), _row(path="images/b.png", stage=7), _row(),
            _row(path="images/c.png", split="dev"), _row(path="images/nope.png")]
    write_manifest(rows, root / "m.csv")
    df, report = read_manifest(root / "m.csv", on_error="skip")
    assert df["path"].tolist() == ["images/a.png"]
    assert report.rows == 6
    assert [line for line, _ in report.skipped] == [3, 4, 5, 6, 7]
    reasons = [r for _, r in report.skipped]
    assert "escapes the dataset root" in reasons[0] and "stage 7 is outside" in reasons[1]
    assert "duplicate path" in reasons[2] and "split 'dev'" in reasons[3] and "does not exist" in reasons[4]
    assert caplog.text.count("skipped:") == 5


def test_check_files_false_allows_missing_images(root):
    write_manifest([_row(path="images/later.png")], root / "m.csv")
    df, _ = read_manifest(root / "m.csv", check_files=False)
    assert df.loc[0, "abspath"].endswith("later.png")


def test_file_level_errors(root):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(root / "none.csv")
    pd.DataFrame({"path": ["images/a.png"], "disease": ["healthy"]}).to_csv(root / "cols.csv", index=False)
    with pytest.raises(ManifestError, match=r"lacks columns \['stage', 'split'\]"):
        read_manifest(root / "cols.csv")
    pd.DataFrame(columns=COLUMNS).to_csv(root / "empty.csv", index=False)
    with pytest.raises(ManifestError, match="has no rows"):
        read_manifest(root / "empty.csv")
    (root / "blank.csv").write_text("")
    with pytest.raises(ManifestError, match="not a readable CSV"):
        read_manifest(root / "blank.csv")
    with pytest.raises(ManifestError, match=r"cannot read it as a manifest \(IsADirectoryError: .*\); give real= a "):
        read_manifest(root, source="real")  # a folder, not its manifest.csv: no traceback
    # a blank line between rows: the error names the file's own line of the bad row (it named the one before)
    write_manifest([_row(), _row(path="images/b.png", stage=9)], root / "gap.csv")
    lines = (root / "gap.csv").read_text().splitlines()
    (root / "gap.csv").write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    with pytest.raises(ManifestError, match=r"gap\.csv:4: stage 9"):
        read_manifest(root / "gap.csv", check_files=False)
    df, report = read_manifest(root / "gap.csv", check_files=False, on_error="skip")
    assert len(df) == 1 and report.rows == 2 and report.skipped[0][0] == 4
    write_manifest([_row(stage=9)], root / "allbad.csv")
    with pytest.raises(ManifestError, match=r"every row was skipped \(1\); first: stage 9"):
        read_manifest(root / "allbad.csv", on_error="skip")
    with pytest.raises(ManifestError, match="on_error must be"):
        read_manifest(root / "allbad.csv", on_error="ignore")
