"""VOC-2012 action layout: the generated tree, the reader (one sample per person box) and the box crops."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from vggfeat.benchmarks.base import DatasetError
from vggfeat.benchmarks.voc_action import VOC_ACTIONS, load_voc_action, read_action_split, write_box_crops
from vggfeat.data.synthetic_voc_action import make_voc2012_action


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("act")
    make_voc2012_action(root, n_train=24, n_val=16, seed=2)
    return root


def test_generated_layout_is_the_devkits(voc):
    action = voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Action"
    train = (action / "train.txt").read_text().split()
    assert len(train) == 24 and train[0] == "2012_000001"
    lines = [line.split() for line in (action / "jumping_train.txt").read_text().splitlines()]
    assert all(len(parts) == 3 and parts[2] in ("1", "-1") for parts in lines)
    # one line per person instance, and each instance has at most one of the 10 actions ('other' has none)
    flags = np.array(
        [[int(x.split()[2]) for x in (action / f"{a}_train.txt").read_text().splitlines()] for a in VOC_ACTIONS]
    )
    assert flags.shape[1] == len(lines) > len(train)  # some images hold two people
    assert set((flags == 1).sum(axis=0)) <= {0, 1} and (flags == 1).sum() > 0.8 * flags.shape[1]
    # the object index names a person in the XML, whose <actions> agree with the files
    image_id, obj, _ = lines[0]
    root = ET.parse(voc / "VOCdevkit" / "VOC2012" / "Annotations" / f"{image_id}.xml").getroot()
    person = list(root.iter("object"))[int(obj) - 1]
    assert person.findtext("name") == "person"
    acts = {a.tag: int(a.text) for a in person.find("actions")}
    assert [acts[a] for a in VOC_ACTIONS] == [1 if f == 1 else 0 for f in flags[:, 0]]
    assert max(int(parts[1]) for parts in lines) >= 2  # persons after another object or person


def test_reader_gives_one_sample_per_person_box(voc):
    train, val = load_voc_action(voc)
    assert train.name == "train" and val.name == "val"
    assert train.labels.shape == (len(train), 10) and set(np.unique(train.labels)) <= {-1, 1}
    assert not set(train.image_paths) & set(val.image_paths)
    vocdir = voc / "VOCdevkit" / "VOC2012"
    # the boxes are the XML's, for the object the action files name (counting every object from 1)
    for k in range(len(train)):
        root = ET.parse(vocdir / "Annotations" / f"{train.image_ids[k]}.xml").getroot()
        bb = list(root.iter("object"))[train.object_indices[k] - 1].find("bndbox")
        assert list(train.boxes[k]) == [int(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
    assert any(o > 1 for o in train.object_indices)
    with pytest.raises(ValueError):
        train.labels[0, 0] = 0  # frozen ground truth


def test_box_crops_are_the_decoded_box_and_reused(voc, tmp_path):
    train, _ = load_voc_action(voc)
    crops = write_box_crops(train, tmp_path / "crops")
    assert len(crops) == len(set(crops)) == len(train)
    x0, y0, x1, y1 = train.boxes[0]
    full = np.asarray(Image.open(train.image_paths[0]).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(crops[0])), full[y0 - 1 : y1, x0 - 1 : x1])
    before = [p.stat().st_mtime_ns for p in sorted((tmp_path / "crops").iterdir())]
    assert write_box_crops(train, tmp_path / "crops") == crops
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "crops").iterdir())] == before


def _copy(voc, tmp_path):
    import shutil

    shutil.copytree(voc / "VOCdevkit", tmp_path / "VOCdevkit")
    return tmp_path / "VOCdevkit" / "VOC2012"


def test_bad_layouts_name_the_file_and_line(voc, tmp_path):
    vocdir = _copy(voc, tmp_path)
    action = vocdir / "ImageSets" / "Action"
    lines = (action / "phoning_val.txt").read_text().splitlines()
    (action / "phoning_val.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match=r"phoning_val\.txt: lacks person .*jumping_val\.txt, line"):
        read_action_split(vocdir, "val")
    (action / "phoning_val.txt").write_text("\n".join([lines[0] + " 7", *lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match=r"phoning_val\.txt, line 1: expected '<image id> <object index> <flag>'"):
        read_action_split(vocdir, "val")
    image_id = lines[0].split()[0]
    (action / "phoning_val.txt").write_text("\n".join([f"{image_id} 9 1", *lines[1:]]) + "\n")
    for a in VOC_ACTIONS:  # the same bad instance in every file: now the XML has no object 9
        rows = (action / f"{a}_val.txt").read_text().splitlines()
        (action / f"{a}_val.txt").write_text("\n".join([f"{image_id} 9 -1", *rows[1:]]) + "\n")
    with pytest.raises(DatasetError, match=rf"jumping_val\.txt, line 1: .*{image_id}\.xml has \d objects, no object 9"):
        read_action_split(vocdir, "val")


def test_an_object_that_is_not_a_person_is_refused(voc, tmp_path):
    vocdir = _copy(voc, tmp_path)
    xml = next(
        p
        for p in sorted((vocdir / "Annotations").glob("*.xml"))
        if ET.parse(p).getroot().find("object").findtext("name") != "person"
    )
    image_id = xml.stem
    split = "train" if image_id in (vocdir / "ImageSets" / "Action" / "train.txt").read_text().split() else "val"
    for a in VOC_ACTIONS:
        f = vocdir / "ImageSets" / "Action" / f"{a}_{split}.txt"
        f.write_text(f.read_text() + f"{image_id} 1 -1\n")
    with pytest.raises(DatasetError, match=rf"object 1 of .*{image_id}\.xml is a (chair|pottedplant), not a person"):
        read_action_split(vocdir, split)


@pytest.mark.parametrize("encoding", ["x-unknown", "rot13", "utf-32", "punycode", "idna"])
def test_an_annotation_declaring_an_encoding_expat_cannot_use_is_named(tmp_path, encoding):
    """Python's XML parser raises LookupError, ValueError or UnicodeError (not ParseError) for these."""
    from vggfeat.benchmarks.voc_action import read_person_boxes

    xml = tmp_path / "2012_000001.xml"
    xml.write_bytes(f'<?xml version="1.0" encoding="{encoding}"?>\n<annotation></annotation>\n'.encode())
    with pytest.raises(DatasetError, match=rf"^{xml}: not valid XML \(.+\)$"):
        read_person_boxes(xml)
