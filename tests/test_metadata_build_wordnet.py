"""metadata_build/wordnet.py: WordNet synset names and OMW lemmas, unpacked or zipped."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from worldclip.pipelines.metadata_build import wordnet

DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis
02085374 05 n 02 Paris 0 City_of_Light 0 000 | the capital of France
02086000 05 n 01 hot_dog 0 000 | a frankfurter
02087000 05 n 01 dog 1 000 | a second sense of dog (same synset name)
"""


DATA_ADJ = """\
  1 license header
00001740 00 a 01 able 0 005 | having the necessary means
00002000 00 s 02 big(a) 0 large 0 000 | above average in size
"""


def _write_wordnet(root: Path) -> None:
    wn = root / "corpora" / "wordnet"
    wn.mkdir(parents=True)
    (wn / "data.noun").write_text(DATA_NOUN)
    (wn / "data.adj").write_text(DATA_ADJ)
    (wn / "index.noun").write_text("dog n 1 ...\n")  # not read
    omw = root / "corpora" / "omw-1.4"
    for proj, lang, rows in [
        ("fin", "fin", [("02084071-n", "lemma", "koira"), ("02084071-n", "def", "eläin"),
                        ("02086000-n", "lemma", "nakki_makkara"), ("00001740-n", "lemma", "olio")]),
        ("cow", "cmn", [("02084071-n", "lemma", "狗"), ("02084071-n", "lemma", "犬+"),
                        ("02084071-n", "lemma", "!!")]),
        ("als", "als", [("02084071-n", "lemma", "qen")]),
        ("eng", "eng", [("02084071-n", "lemma", "domestic_dog")]),
        ("xyz", "xyz", [("02084071-n", "lemma", "zz")]),
    ]:
        (omw / proj).mkdir(parents=True)
        body = f"# {proj}\t{lang}\thttp://example\tlicense\n" + "".join(
            f"{o}\t{lang}:{k}\t{v}\n" for o, k, v in rows)
        (omw / proj / f"wn-data-{lang}.tab").write_text(body, encoding="utf-8")


def test_read_wordnet_synset_names_and_omw_lemmas(tmp_path):
    _write_wordnet(tmp_path)
    out, info = wordnet.read_wordnet(str(tmp_path))
    # NLTK order (adj, adv, noun, verb), first lemma lower-cased, markers and "_" removed
    assert out["en"] == ["able", "big", "entity", "dog", "paris", "hot dog"]
    assert out["fi"] == ["koira", "nakki makkara", "olio"]  # sorted, definitions skipped
    assert out["zh"] == ["!!", "犬", "狗"]  # "+" removed; punctuation dropped later
    assert out["sq"] == ["qen"]  # OMW "als" is Albanian (wiki sq), not Alemannic
    assert "als" not in out and "xyz" not in out
    assert info["unmapped"] == ["xyz"]


def test_read_wordnet_from_the_downloaders_zips(tmp_path):
    unpacked = tmp_path / "u"
    _write_wordnet(unpacked)
    zipped = tmp_path / "z" / "corpora"
    zipped.mkdir(parents=True)
    for name in ("wordnet", "omw-1.4"):
        with zipfile.ZipFile(zipped / f"{name}.zip", "w") as z:
            for f in sorted((unpacked / "corpora" / name).rglob("*")):
                if f.is_file():
                    z.write(f, str(f.relative_to(unpacked / "corpora")))
    assert wordnet.read_wordnet(str(tmp_path / "z"))[0] == wordnet.read_wordnet(str(unpacked))[0]


def test_read_wordnet_missing_names_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.wordnet_dir"):
        wordnet.read_wordnet(str(tmp_path))
