"""ku.data.readers: AVA / Photo.net / CSV readers, theme vocabulary, the papers' splits."""
import logging

import numpy as np
import pandas as pd
import pytest

from ku.data.readers import (
    distributions,
    read_ava,
    read_ava_test_list,
    read_challenges,
    read_label_csv,
    read_photonet,
    split_hosu,
    split_murray,
    split_photonet,
    theme_indices,
    theme_vocabulary,
)

# Real AVA.txt format: index, image id, votes for 1..10, semantic tag 1, tag 2, challenge id.
AVA_LINES = [
    "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396",
    "2 953958 10 7 15 33 34 19 3 0 2 0 14 47 1396",
    "3 954184 0 0 4 8 41 56 10 3 4 2 0 0 1396",
    "4 954113 0 1 8 18 47 52 10 6 1 1 22 27 1396",
    "5 953980 0 3 6 15 72 48 8 2 4 0 31 0 1396",
    "6 954175 0 0 2 3 8 37 59 33 7 5 15 0 1396",
    "7 1 0 0 0 0 0 0 0 0 0 0 0 0 1397",      # no votes
    "8 777 1 2 3 4 5 6 7 8 9 10 4 0 20",     # image missing on disk
    "9 778 3 3 3 3 3 3 3 3 3 3 4 0 9",
]
IDS_ON_DISK = ["953619", "953958", "954184", "954113", "953980", "954175", "1", "778"]
AVA_CHALLENGES = [1396, 1396, 1396, 1396, 1396, 1396, 1397, 20, 9]


def _write_ava(root, lines=AVA_LINES, test_ids=("954184", "953980", "777"), on_disk=IDS_ON_DISK):
    root.mkdir(parents=True, exist_ok=True)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    (root / "challenges.txt").write_text("9 Free Study\n20 Motion Blur\n1396 Shadows 2\n1397 Empty\n")
    (root / "aesthetics_image_lists").mkdir(exist_ok=True)
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("\n".join(test_ids) + "\n")
    (root / "images").mkdir(exist_ok=True)
    for i in on_disk:
        (root / "images" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff")  # the reader only checks existence
    return root


def _ref_stats(line):
    c = np.array(line.split()[2:12], float)
    p = c / c.sum()
    k = np.arange(1, 11)
    mos = (k * p).sum()
    return p, mos, np.sqrt((p * (k - mos) ** 2).sum()), c.sum()


def test_read_ava_values_and_columns(tmp_path, caplog):
    root = _write_ava(tmp_path / "ava")
    with caplog.at_level(logging.WARNING, logger="ku.data.readers"):
        df = read_ava(root, split=None)
    cols = ["image_id", "image_path", "mos", "std", "n_votes"] + [f"dist_{k}" for k in range(1, 11)] \
        + ["theme", "theme_index", "set", "tag1", "tag2"]
    assert list(df.columns) == cols
    assert df["image_id"].tolist() == ["953619", "953958", "954184", "954113", "953980", "954175", "778"]
    assert df["mos"].dtype == np.float64 and df["theme"].dtype == np.int64 and df["theme_index"].dtype == np.int64
    for line in AVA_LINES[:6] + AVA_LINES[8:]:
        p, mos, std, n = _ref_stats(line)
        row = df.loc[df["image_id"] == line.split()[1]].iloc[0]
        np.testing.assert_allclose(row[[f"dist_{k}" for k in range(1, 11)]].to_numpy(float), p)
        np.testing.assert_allclose([row["mos"], row["std"], row["n_votes"]], [mos, std, n])
        assert row["image_path"] == str((root / "images" / f"{line.split()[1]}.jpg").resolve())
        assert row["tag1"] == int(line.split()[12]) and row["theme"] == int(line.split()[14])
    np.testing.assert_allclose(distributions(df).sum(axis=1), 1.0)
    # missing image and zero-vote rows: dropped and reported, no crash
    assert df.attrs["missing"] == ["777"]
    assert df.attrs["no_votes"] == ["1"]
    assert "1 of 8 images" in caplog.text and "777" in caplog.text and "no votes" in caplog.text
    # split=None: test list rows are "test", the rest "training"
    assert set(df.loc[df["set"] == "test", "image_id"]) == {"954184", "953980"}
    assert set(df["set"]) == {"training", "test"}
    assert df.attrs["challenges"][20] == "Motion Blur"
    assert df.attrs["test_ids_not_found"] == 1


def test_read_ava_theme_vocabulary(tmp_path):
    root = _write_ava(tmp_path / "ava")
    df = read_ava(root, split=None)
    voc = theme_vocabulary(AVA_CHALLENGES)  # from all ids of the file, before rows are dropped
    assert voc == {9: 1, 20: 2, 1396: 3, 1397: 4}
    assert df.attrs["theme_vocabulary"] == voc
    assert df.set_index("image_id").loc["778", "theme_index"] == 1
    assert (df.loc[df["theme"] == 1396, "theme_index"] == 3).all()
    # an explicit (e.g. training) vocabulary: unknown ids map to 0
    df2 = read_ava(root, split=None, vocabulary={1396: 1, 5: 2})
    assert (df2.loc[df2["theme"] == 1396, "theme_index"] == 1).all()
    assert df2.set_index("image_id").loc["778", "theme_index"] == 0


def test_theme_vocabulary_unknown_and_zero():
    voc = theme_vocabulary([30, "7", 30, 0, 1396])
    assert voc == {7: 1, 30: 2, 1396: 3}  # sorted, 0 ("no challenge") excluded
    assert theme_indices([1396, 7, 0, 555], voc).tolist() == [3, 1, 0, 0]
    assert theme_indices([], voc).dtype == np.int64


@pytest.mark.parametrize("bad,msg", [
    ("4 954113 0 1 8 18 47 52 10 6 1 1 22 27", r"line 4: expected 15 .* got 14"),
    ("4 954113 0 1 8 x 47 52 10 6 1 1 22 27 1396", r"line 4: field 6 \(votes for score 4\) is not an integer: 'x'"),
    ("4 954113 0 1 8 -3 47 52 10 6 1 1 22 27 1396", r"line 4: negative vote count"),
    ("4 954113 0 1 8 18 47 52 10 6 1 1 22 27 13.5", r"line 4: field 15 \(challenge id\)"),
    ("4 953619 0 1 8 18 47 52 10 6 1 1 22 27 1396", r"line 4: duplicate image id '953619' \(first on line 1\)"),
])
def test_read_ava_malformed_line(tmp_path, bad, msg):
    lines = list(AVA_LINES)
    lines[3] = bad
    root = _write_ava(tmp_path / "ava", lines)
    with pytest.raises(ValueError, match=msg) as e:
        read_ava(root)
    assert "AVA.txt" in str(e.value)


def test_read_ava_blank_lines_and_missing_images_dir(tmp_path, caplog):
    lines = AVA_LINES[:3] + ["", "   "] + AVA_LINES[3:6]
    root = _write_ava(tmp_path / "ava", lines, test_ids=("954184", "953980"), on_disk=[])
    with caplog.at_level(logging.WARNING):
        df = read_ava(root, split="hosu")
    assert len(df) == 0 and len(df.attrs["missing"]) == 6 and "6 of 6 images" in caplog.text
    assert len(read_ava(root, split=None, check_files=False)) == 6


def test_read_ava_splits(tmp_path):
    root = _write_ava(tmp_path / "ava")
    h = read_ava(root, split="hosu")
    assert set(h.loc[h["set"] == "test", "image_id"]) == {"954184", "953980"}
    assert (h["set"] == "validation").sum() == 1  # round(0.05 * 5) = 0 -> at least 1
    m = read_ava(root, split="murray", n_validation=2)
    assert (m["set"] == "validation").sum() == 2
    with pytest.raises(ValueError, match="n_validation=2000"):
        read_ava(root, split="murray")
    (root / "aesthetics_image_lists" / "generic_test.jpgl").unlink()
    with pytest.raises(FileNotFoundError, match="generic_test.jpgl"):
        read_ava(root, split="hosu")
    assert set(read_ava(root, split=None)["set"]) == {"training"}
    with pytest.raises(ValueError, match="split"):
        read_ava(root, split="random")


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in rng.choice(10 ** 6, n, replace=False)]
    return pd.DataFrame({"image_id": ids, "mos": rng.uniform(1, 10, n), "set": "training"})


def _sets(df):
    return dict(zip(df["image_id"], df["set"]))


def test_split_hosu_disjoint_reproducible(tmp_path):
    df = _table(2000)
    test_ids = df["image_id"].iloc[::10].tolist() + ["not-in-table"]
    a = split_hosu(df, test_ids, seed=0)
    assert len(a) == len(df) and set(a["set"]) == {"training", "validation", "test"}
    assert set(a.loc[a["set"] == "test", "image_id"]) == set(test_ids[:-1])
    n_rest = 2000 - 200
    assert (a["set"] == "validation").sum() == round(0.05 * n_rest) == 90
    assert _sets(split_hosu(df, test_ids, seed=0)) == _sets(a)  # same seed, same split
    b = split_hosu(df, test_ids, seed=1)
    assert set(b.loc[b["set"] == "validation", "image_id"]) != set(a.loc[a["set"] == "validation", "image_id"])
    # independent of row order
    shuffled = df.sample(frac=1.0, random_state=3)
    assert _sets(split_hosu(shuffled, test_ids, seed=0)) == _sets(a)
    assert df["set"].eq("training").all()  # input not modified
    with pytest.raises(ValueError, match="test_ids"):
        split_hosu(df, None)


def test_split_murray():
    df = _table(3000)
    test_ids = df["image_id"].iloc[:500]
    a = split_murray(df, test_ids, seed=0)
    assert (a["set"] == "validation").sum() == 2000 and (a["set"] == "test").sum() == 500
    assert (a["set"] == "training").sum() == 500
    assert _sets(split_murray(df, test_ids, seed=0)) == _sets(a)
    assert _sets(split_murray(df, test_ids, seed=5)) != _sets(a)
    f = split_murray(df, test_ids, n_validation=0.1)
    assert (f["set"] == "validation").sum() == 250
    with pytest.raises(ValueError, match=r"only 2500 non-test rows"):
        split_murray(df, test_ids, n_validation=2500)


def test_split_photonet_counts():
    df = _table(16666)
    a = split_photonet(df, seed=0)
    counts = a["set"].value_counts().to_dict()
    assert counts == {"training": 14800, "test": 1200, "validation": 666}  # Jia et al. §IV-A
    assert _sets(split_photonet(df, seed=0)) == _sets(a)
    assert _sets(split_photonet(df, seed=1)) != _sets(a)
    small = split_photonet(_table(1000), seed=0)["set"].value_counts().to_dict()
    assert small == {"training": 888, "test": 72, "validation": 40}  # proportional
    tiny = split_photonet(_table(3), seed=0)["set"].value_counts().to_dict()
    assert tiny == {"training": 1, "test": 1, "validation": 1}


def test_read_photonet_mixed_rows(tmp_path):
    (tmp_path / "images").mkdir()
    lines = [
        "image_id c1 c2 c3 c4 c5 c6 c7",  # header
        "# comment",
        "1001 0 1 2 5 3 1 0",
        "1002 4.5 1.2",
        "1003 5.25 0.9 14",
        "1004, 1, 0, 0, 0, 0, 0, 9",
        "1005 0 0 0 0 0 0 0",  # no votes: dropped
        "1006 3 1",  # image missing
    ]
    (tmp_path / "photonet.txt").write_text("\n".join(lines) + "\n")
    for i in ["1001", "1002", "1003", "1004", "1005"]:
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"x")
    df = read_photonet(tmp_path / "photonet.txt", split=None)
    assert df["image_id"].tolist() == ["1001", "1002", "1003", "1004"]
    assert [c for c in df.columns if c.startswith("dist_")] == [f"dist_{k}" for k in range(1, 8)]
    c = np.array([0, 1, 2, 5, 3, 1, 0], float)
    p = c / c.sum()
    mos = (np.arange(1, 8) * p).sum()
    r = df.iloc[0]
    np.testing.assert_allclose([r["mos"], r["n_votes"]], [mos, 12])
    np.testing.assert_allclose(r["std"], np.sqrt((p * (np.arange(1, 8) - mos) ** 2).sum()))
    assert df.iloc[1][["mos", "std"]].tolist() == [4.5, 1.2] and np.isnan(df.iloc[1]["n_votes"])
    assert df.iloc[2]["n_votes"] == 14
    assert np.isnan(distributions(df)[1:3]).all() and not np.isnan(distributions(df)[[0, 3]]).any()
    np.testing.assert_allclose(df.iloc[3]["mos"], (1 + 9 * 7) / 10)
    assert df.attrs["missing"] == ["1006"] and df.attrs["no_votes"] == ["1005"]
    assert (df["theme"] == 0).all() and (df["theme_index"] == 0).all()
    j = read_photonet(tmp_path / "photonet.txt", split="jia")
    assert sorted(j["set"].value_counts().to_dict().values()) == [1, 1, 2]


@pytest.mark.parametrize("line,msg", [
    ("2001 1 2 3 4 5", r"line 2: expected an image id followed by 7 vote counts"),
    ("2001 9.5 1.0", r"line 2: mean score 9.5 outside the 1..7 scale"),
    ("2001 1 2 x 4 5 6 7", r"line 2: field 4 is not a number"),
    ("2001 1 2 3.5 4 5 6 7", r"line 2: vote counts must be integers"),
])
def test_read_photonet_malformed(tmp_path, line, msg):
    (tmp_path / "p.txt").write_text("2000 4 1\n" + line + "\n")
    with pytest.raises(ValueError, match=msg) as e:
        read_photonet(tmp_path / "p.txt", check_files=False)
    assert "p.txt" in str(e.value)


def test_read_label_csv(tmp_path):
    (tmp_path / "imgs").mkdir()
    for n in ["a.png", "b.jpg", "c.jpg"]:
        (tmp_path / "imgs" / n).write_bytes(b"x")
    dist_cols = {f"dist_{k}": [0.0] * 3 for k in (10, 2, 1, 3, 4, 5, 6, 7, 8, 9)}  # lexical order
    dist_cols["dist_10"] = [1.0, 0.0, 0.0]
    dist_cols["dist_1"] = [0.0, 2.0, 1.0]
    dist_cols["dist_2"] = [0.0, 2.0, 3.0]
    pd.DataFrame({"image_id": ["a.png", "b", "c"], "std": [1, 2, 3], "set": ["test", "training", "validation"],
                  **dist_cols}).to_csv(tmp_path / "l.csv", index=False)
    df = read_label_csv(tmp_path / "l.csv", images_dir=tmp_path / "imgs")
    assert [c for c in df.columns if c.startswith("dist_")] == [f"dist_{k}" for k in range(1, 11)]
    d = distributions(df)
    np.testing.assert_allclose(d[:, 9], [1, 0, 0])
    np.testing.assert_allclose(d[1, :2], [0.5, 0.5])
    np.testing.assert_allclose(df["mos"], [10, 1.5, 1.75])  # from the distribution
    assert df["image_path"].tolist() == [str(tmp_path / "imgs" / n) for n in ["a.png", "b.jpg", "c.jpg"]]
    assert df["set"].tolist() == ["test", "training", "validation"] and np.isnan(df["n_votes"]).all()


def test_read_label_csv_paths_and_errors(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.jpg").write_bytes(b"x")
    pd.DataFrame({"name": ["007", "008"], "file": ["x/1.jpg", "x/2.jpg"], "score": [3.5, 4.0],
                  "challenge": [12, 0]}).to_csv(tmp_path / "l.csv", index=False)
    df = read_label_csv(tmp_path / "l.csv", id_column="name", path_column="file", mos_column="score",
                        theme_column="challenge")
    assert df["image_id"].tolist() == ["007"] and df.attrs["missing"] == ["008"]
    assert df["image_path"].iloc[0] == str(tmp_path / "x" / "1.jpg")
    assert df["theme"].tolist() == [12] and df["theme_index"].tolist() == [1]
    assert not any(c.startswith("dist_") for c in df.columns)
    with pytest.raises(ValueError, match=r"l\.csv.*required column 'mos'"):
        read_label_csv(tmp_path / "l.csv", id_column="name", path_column="file")
    with pytest.raises(ValueError, match=r"required column 'image_id'"):
        read_label_csv(tmp_path / "l.csv")
    with pytest.raises(ValueError, match=r"required column 'path'"):
        read_label_csv(tmp_path / "l.csv", id_column="name", mos_column="score", path_column="path")
    pd.DataFrame({"image_id": ["a", "a"], "mos": [1, 2]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match=r"line 3: duplicate image id 'a'"):
        read_label_csv(tmp_path / "d.csv", check_files=False)
    pd.DataFrame({"image_id": ["a"], "mos": [1], "set": ["train"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"'set' must be one of"):
        read_label_csv(tmp_path / "s.csv", check_files=False)


def test_distributions_numeric_order():
    df = pd.DataFrame({"dist_10": [0.1], "dist_2": [0.2], "dist_1": [0.7], "mos": [1.0]})
    np.testing.assert_allclose(distributions(df), [[0.7, 0.2, 0.1]])
    with pytest.raises(ValueError, match="dist_"):
        distributions(pd.DataFrame({"mos": [1.0]}))


# ---------------------------------------------------------------------------------------------
# encodings, byte-order marks, test lists that do not match, 64-bit overflow, duplicate columns

TEST_LIST = ("954184", "953980")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_test_list_with_a_byte_order_mark_keeps_every_test_id(tmp_path, encoding):
    """A BOM (Windows editors) or UTF-16 used to move test images into training silently."""
    root = _write_ava(tmp_path / "ava", test_ids=TEST_LIST)
    p = root / "aesthetics_image_lists" / "generic_test.jpgl"
    p.write_bytes(("\n".join(TEST_LIST) + "\r\n").encode(encoding if encoding != "utf-16-be" else "utf-16"))
    assert read_ava_test_list(p) == list(TEST_LIST)
    df = read_ava(root, split="hosu")
    assert set(df.loc[df["set"] == "test", "image_id"]) == set(TEST_LIST)


def test_utf16_without_byte_order_mark_is_refused(tmp_path):
    p = tmp_path / "generic_test.jpgl"
    p.write_bytes("954184\n953980\n".encode("utf-16-le"))
    with pytest.raises(ValueError, match="NUL bytes") as exc:
        read_ava_test_list(p)
    assert str(p) in str(exc.value) and "UTF-16" in str(exc.value)


def test_undecodable_test_list_is_an_error_not_a_replacement(tmp_path):
    p = tmp_path / "generic_test.jpgl"
    p.write_bytes(b"954184\n95\xff3980\n")
    with pytest.raises(ValueError, match="line 2: not valid utf-8"):
        read_ava_test_list(p)


def test_test_list_that_does_not_match_the_labels_is_an_error(tmp_path):
    root = _write_ava(tmp_path / "ava", test_ids=("954184", "x953980", "y954113"))
    p = root / "aesthetics_image_lists" / "generic_test.jpgl"
    for split in ("hosu", "murray", None):
        with pytest.raises(ValueError) as exc:
            read_ava(root, split=split, n_validation=1)
        msg = str(exc.value)
        assert str(p) in msg and "2 of 3 test ids" in msg and "'x953980'" in msg, msg
    df = read_ava(root, split="hosu", max_unknown_test_ids=0.7)  # explicitly tolerated
    assert df.loc[df["set"] == "test", "image_id"].tolist() == ["954184"]
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no image ids"):
        read_ava(root, split="hosu")


@pytest.mark.parametrize("field, value", [(2, "99999999999999999999"), (14, "-" + "9" * 25), (11, str(2 ** 63))])
def test_ava_integer_overflow_names_file_and_line(tmp_path, field, value):
    lines = list(AVA_LINES)
    tok = lines[1].split()
    tok[field] = value
    lines[1] = " ".join(tok)
    root = _write_ava(tmp_path / "ava", lines=lines, test_ids=TEST_LIST)
    with pytest.raises(ValueError) as exc:
        read_ava(root, split=None)
    assert f"{root / 'AVA.txt'}: line 2:" in str(exc.value) and "too large" in str(exc.value)


def test_ava_vote_sum_overflow(tmp_path):
    lines = list(AVA_LINES)
    big = str(2 ** 62)
    lines[1] = f"2 953958 {big} {big} {big} 33 34 19 3 0 2 0 14 47 1396"
    root = _write_ava(tmp_path / "ava", lines=lines, test_ids=TEST_LIST)
    with pytest.raises(ValueError, match="line 2: vote counts sum to more"):
        read_ava(root, split=None)


def test_challenges_with_bom_and_utf16(tmp_path):
    p = tmp_path / "challenges.txt"
    p.write_bytes("\ufeff9 Free Study\n20 Motion Blur\n".encode("utf-8"))
    assert read_challenges(p) == {9: "Free Study", 20: "Motion Blur"}
    p.write_bytes("9 Free Study\n20 Bewegungsunschärfe\n".encode("utf-16"))
    assert read_challenges(p) == {9: "Free Study", 20: "Bewegungsunschärfe"}
    p.write_bytes(b"9 Free Study\n20 Motion \xff Blur\n")
    with pytest.raises(ValueError, match="line 2: not valid utf-8"):
        read_challenges(p)


def test_csv_with_a_duplicated_column_is_an_error(tmp_path):
    (tmp_path / "l.csv").write_text("image_id,mos,mos\na,5,6\n")
    with pytest.raises(ValueError) as exc:
        read_label_csv(tmp_path / "l.csv", check_files=False)
    assert f"{tmp_path / 'l.csv'}: line 1: column 'mos' appears more than once" in str(exc.value)
    (tmp_path / "s.csv").write_text("image_id;;mos;;image_id\na;;5;;b\n")
    with pytest.raises(ValueError, match="column 'image_id' appears more than once"):
        read_label_csv(tmp_path / "s.csv", sep=";;", check_files=False)


def test_csv_in_utf16_is_read_and_declared_mismatch_refused(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes("image_id,mos\nä,5\n".encode("utf-16"))
    assert read_label_csv(p, check_files=False)["image_id"].tolist() == ["ä"]
    assert read_label_csv(p, encoding="utf-16", check_files=False)["image_id"].tolist() == ["ä"]
    with pytest.raises(ValueError, match="UTF-16 byte-order mark, but encoding='latin-1'"):
        read_label_csv(p, encoding="latin-1", check_files=False)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes")
def test_label_file_that_is_a_named_pipe_is_refused(tmp_path):
    import os

    p = tmp_path / "labels.csv"
    os.mkfifo(p)
    with pytest.raises(ValueError, match="not a regular file: a named pipe"):
        read_label_csv(p)
    os.mkfifo(tmp_path / "generic_test.jpgl")
    with pytest.raises(ValueError, match="named pipe"):
        read_ava_test_list(tmp_path / "generic_test.jpgl")
