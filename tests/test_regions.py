"""Region-annotation readers in their real file layouts, and the patch grid.

Every file is built here, in the layout the dataset ships (header, column order, quirks), with
made-up ids and values; hand-computed coverages on a 4 x 4 grid (image_size 64, patch 16, so a
1024-pixel image has patches of 256 x 256 original pixels).
"""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
import torch

from maskkit.data.regions import (
    ImageRegions, Region, RegionError, coverage_batch, decode_runs, from_phantoms, lesion_patches, mask_coverage,
    parse_siim_rle, patch_coverage, phantom_regions, read_ms_cxr, read_nih_bbox, read_rsna, read_siim, read_vindr,
)
from tests.conftest import shared_path
import maskkit.data.regions as R  # noqa: E402

G = 4  # 64 / 16


def cov(im: ImageRegions, label=None, min_raters=1) -> np.ndarray:
    return patch_coverage(im, 64, 16, label, min_raters).reshape(G, G)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --- RSNA Pneumonia -------------------------------------------------------------------------------

RSNA = ("patientId,x,y,width,height,Target\n"
        "aaaa0001-0000-4000-8000-000000000001,,,,,0\n"
        "aaaa0002-0000-4000-8000-000000000002,128.0,256.0,256.0,256.0,1\n"
        "aaaa0002-0000-4000-8000-000000000002,512.0,512.0,512.0,512.0,1\n")


def test_rsna_boxes_negatives_and_hand_coverage(tmp_path):
    p = tmp_path / "stage_2_train_labels.csv"
    p.write_text(RSNA)
    rs = read_rsna(p)
    neg, pos = "aaaa0001-0000-4000-8000-000000000001", "aaaa0002-0000-4000-8000-000000000002"
    assert list(rs.images) == [neg, pos] and rs.negatives() == [neg] and rs.positives() == [pos]
    im = rs.images[pos]
    assert im.size == (1024, 1024) and [r.box for r in im.regions] == [(128, 256, 256, 256), (512, 512, 512, 512)]
    assert {r.label for r in im.regions} == {"Pneumonia"} and im.regions[1].where == f"{p}: row 4"
    # box 1 covers the right half of patch (1, 0) and the left half of (1, 1); box 2 the bottom-right 2 x 2
    want = np.zeros((G, G))
    want[1, 0] = want[1, 1] = 0.5
    want[2:, 2:] = 1.0
    np.testing.assert_allclose(cov(im), want)
    assert not cov(rs.images[neg]).any()
    # a patch is lesion at >= 0.1 of its area
    assert lesion_patches(torch.from_numpy(cov(im).reshape(-1))).sum() == 6
    batch = coverage_batch(rs, [pos, neg], 64, 16)
    assert batch.shape == (2, 16) and batch.dtype == torch.float32 and batch[1].sum() == 0


@pytest.mark.parametrize("row, expect", [
    ("aaaa0003,900.0,10.0,200.0,50.0,1", r"row 2: box \(x=900, y=10, w=200, h=50\) reaches outside the 1024x1024 image; expected"),
    ("aaaa0003,10.0,10.0,-5.0,50.0,1", r"row 2: box .* has a negative size; expected a positive width"),
    ("aaaa0003,10.0,10.0,0,50.0,1", r"row 2: box .* has a zero size"),
    ("aaaa0003,,,,,1", r"row 2, column 'x': expected a number of pixels, got ''"),
    ("aaaa0003,1,2,3,4,0", r"row 2: Target 0 with a box \(1, 2, 3, 4\); expected empty"),
    ("aaaa0003,,,,,yes", r"row 2, column 'Target': expected 1 or 0, got 'yes'"),
    (",,,,,0", r"row 2, column 'patientId': empty image id"),
])
def test_rsna_bad_rows_are_one_line(tmp_path, row, expect):
    p = tmp_path / "stage_2_train_labels.csv"
    p.write_text("patientId,x,y,width,height,Target\n" + row + "\n")
    with pytest.raises(RegionError, match=expect) as e:
        read_rsna(p)
    assert one_line(e).startswith(str(p))


def test_edge_overhang_of_one_pixel_is_clipped(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("patientId,x,y,width,height,Target\nq,768.0,0.0,256.5,256.0,1\n")
    np.testing.assert_allclose(cov(read_rsna(p).images["q"])[0], [0, 0, 0, 1.0])


# --- NIH ChestX-ray14 ------------------------------------------------------------------------------

NIH = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
       "00009999_001.png,Nodule,100.5,0,51.2,256,,,\n"
       "00009999_001.png,Infiltrate,200.0,300.0,100.0,100.0,,,\n"
       "00009998_000.png,Effusion,0,0,1024,1024,,,\n")


def test_nih_bbox_header_quirk_labels_and_fractional_box(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text(NIH)
    rs = read_nih_bbox(p)
    im = rs.images["00009999_001.png"]
    assert [r.label for r in im.regions] == ["Nodule", "Infiltration"]  # the file's 'Infiltrate', renamed
    assert im.regions[0].box == (100.5, 0.0, 51.2, 256.0)
    nodule = cov(im, "Nodule")
    # 51.2 x 256 pixels, all inside patch (0, 0): 51.2 / 256 of it
    assert nodule[0, 0] == pytest.approx(0.2) and nodule.sum() == pytest.approx(0.2)
    inf = cov(im, "Infiltration")
    # x 200..300 spans patches 0 (56 px) and 1 (44 px); y 300..400 lies in patch row 1
    assert inf[1, 0] == pytest.approx(56 * 100 / 256**2) and inf[1, 1] == pytest.approx(44 * 100 / 256**2)
    assert rs.pairs() == [("00009999_001.png", "Nodule"), ("00009999_001.png", "Infiltration"),
                          ("00009998_000.png", "Effusion")]
    np.testing.assert_allclose(cov(rs.images["00009998_000.png"]), 1.0)


def test_nih_missing_column_is_one_line(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text("Image Index,Finding Label,x,y,w,h\n00009999_001.png,Nodule,1,2,3,4\n")
    with pytest.raises(RegionError, match=r"missing column 'Bbox \[x'") as e:
        read_nih_bbox(p)
    assert one_line(e).startswith(str(p))


def test_an_image_id_not_in_the_dataset_is_one_line(tmp_path):
    """Against the real NIH Data_Entry_2017_v2020.csv (all 112,120 ids): two real ids pass, a third
    that NIH never released is named with its row."""
    entry = shared_path("metadata", "Data_Entry_2017_v2020.csv.gz")
    with gzip.open(entry, "rt", newline="") as fh:
        known = {r["Image Index"] for r in csv.DictReader(fh)}
    assert len(known) == 112_120 and "00000001_000.png" in known
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                 "00000001_000.png,Cardiomegaly,10,10,20,20,,,\n"
                 "00000001_001.png,Cardiomegaly,10,10,20,20,,,\n"
                 "99999999_000.png,Mass,10,10,20,20,,,\n")
    rs = read_nih_bbox(p)
    with pytest.raises(RegionError, match=r"row 4: image id '99999999_000.png' is not in NIH Data_Entry "
                                          r"\(1 of 3 annotated ids are not\)") as e:
        rs.require_ids(known, "NIH Data_Entry")
    assert one_line(e).startswith(str(p))
    rs.images.pop("99999999_000.png")
    rs.require_ids(known, "NIH Data_Entry")  # the rest are real


# --- SIIM-ACR pneumothorax --------------------------------------------------------------------------

def rle2mask_reference(rle: str, width: int, height: int) -> np.ndarray:
    """The competition's definition, written out as a loop: a running position, each offset from
    the end of the previous run, the flat array reshaped (width, height) and transposed."""
    mask = np.zeros(width * height, dtype=bool)
    vals = [int(v) for v in rle.split()]
    pos = 0
    for off, length in zip(vals[0::2], vals[1::2]):
        pos += off
        mask[pos:pos + length] = True
        pos += length
    return mask.reshape(width, height).T


def test_siim_relative_column_major_rle_by_hand():
    # 4 x 4 image: pixels 1, 2 (column 0, rows 1-2), then 3 after the run's end -> pixel 6 (column 1, row 2)
    runs = parse_siim_rle(" 1 2 3 1", (4, 4), "f: row 2")
    assert runs.tolist() == [[1, 2], [6, 1]]
    want = np.zeros((4, 4), dtype=bool)
    want[1, 0] = want[2, 0] = want[2, 1] = True
    np.testing.assert_array_equal(decode_runs(runs, (4, 4)), want)
    assert parse_siim_rle(" -1", (4, 4), "f: row 2") is None


def test_siim_decoder_matches_the_definition_on_1024():
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(40):
        vals += [int(rng.integers(0, 20_000)), int(rng.integers(1, 900))]
    rle = " ".join(map(str, vals))
    got = decode_runs(parse_siim_rle(rle, (1024, 1024), "f: row 2"), (1024, 1024))
    np.testing.assert_array_equal(got, rle2mask_reference(rle, 1024, 1024))


SIIM = ("ImageId, EncodedPixels\n"
        "1.2.276.0.7230010.3.1.4.8323329.90001.1517875100.100001, -1\n"
        "1.2.276.0.7230010.3.1.4.8323329.90002.1517875100.100002, 0 262144\n"
        "1.2.276.0.7230010.3.1.4.8323329.90002.1517875100.100002, 786432 1024\n")


def test_siim_file_column_major_orientation_and_union(tmp_path):
    p = tmp_path / "train-rle.csv"
    p.write_text(SIIM)
    rs = read_siim(p)
    neg, pos = list(rs.images)
    assert rs.negatives() == [neg] and len(rs.images[pos].regions) == 2
    c = cov(rs.images[pos])
    # row 3: the first 262,144 pixels in column-major order = columns 0..255 (not rows 0..255);
    # row 4 (its own RLE, from pixel 0 again): 786,432 = 768 x 1024 -> column 768, all 1024 rows
    want = np.zeros((G, G))
    want[:, 0] = 1.0
    want[:, 3] = 1 / 256
    np.testing.assert_allclose(c, want)


@pytest.mark.parametrize("cell, expect", [
    (" ", r"row 2, column 'EncodedPixels': empty; expected -1 \(no pneumothorax\) or run-length pairs"),
    (" 5 10 7", r"row 2, column 'EncodedPixels': 3 values \(odd\); expected pairs"),
    (" 5 1x", r"row 2, column 'EncodedPixels': '1x' is not an integer"),
    (" 1048570 10", r"runs end at pixel 1048580, past the 1024x1024 = 1048576 pixels"),
    (" 5 0", r"run length 0; expected lengths >= 1"),
    (" -3 4", r"offset -3 is negative"),
])
def test_siim_bad_rle_is_one_line(tmp_path, cell, expect):
    p = tmp_path / "train-rle.csv"
    p.write_text("ImageId, EncodedPixels\n1.2.3," + cell + "\n")
    with pytest.raises(RegionError, match=expect) as e:
        read_siim(p)
    assert one_line(e).startswith(f"{p}: row 2")


# --- MS-CXR --------------------------------------------------------------------------------------------

MSCXR = ("dicom_id,category,label_text,path,x,y,w,h,image_width,image_height\n"
         "d0000001-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd,Pneumonia,right lower lobe opacity,"
         "files/p10/p10000001/s50000001/d0000001.jpg,1280,1600,640,800,2560,3200\n"
         "d0000001-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd,Pneumonia,right lower lobe opacity,"
         "files/p10/p10000001/s50000001/d0000001.jpg,0,0,640,800,2560,3200\n"
         "d0000001-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd,Cardiomegaly,enlarged  heart,"
         "files/p10/p10000001/s50000001/d0000001.jpg,640,800,1280,1600,2560,3200\n")


def test_ms_cxr_phrases_boxes_and_size_from_each_row(tmp_path):
    p = tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv"
    p.write_text(MSCXR)
    rs = read_ms_cxr(p)
    iid = "d0000001-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd"
    im = rs.images[iid]
    assert im.size == (2560, 3200)  # patches of 640 x 800 pixels
    assert rs.pairs() == [(iid, "right lower lobe opacity"), (iid, "enlarged heart")]
    assert rs.pairs("finding") == [(iid, "Pneumonia"), (iid, "Cardiomegaly")] and rs.findings() == ["Pneumonia", "Cardiomegaly"]
    want = np.zeros((G, G))
    want[0, 0] = want[2, 2] = 1.0  # the phrase's two boxes, one patch each
    np.testing.assert_allclose(cov(im, "right lower lobe opacity"), want)
    np.testing.assert_allclose(cov(im, "Pneumonia"), want)  # by finding
    heart = np.zeros((G, G))
    heart[1:3, 1:3] = 1.0
    np.testing.assert_allclose(cov(im, "enlarged heart"), heart)


def test_ms_cxr_bad_size_and_box(tmp_path):
    p = tmp_path / "ms.csv"
    head = MSCXR.splitlines()[0] + "\n"
    p.write_text(head + "d1,Edema,edema,x.jpg,0,0,10,10,100,100\nd1,Edema,edema,x.jpg,0,0,10,10,100,120\n")
    with pytest.raises(RegionError, match=r"row 3: image 'd1' is 100x120 here and 100x100 at .*row 2; expected one size"):
        read_ms_cxr(p)
    p.write_text(head + "d1,Edema,edema,x.jpg,50,0,60,10,100,100\n")
    with pytest.raises(RegionError, match=r"row 2: box \(x=50, y=0, w=60, h=10\) reaches outside the 100x100 image"):
        read_ms_cxr(p)


# --- VinDr-CXR -----------------------------------------------------------------------------------------

VINDR = ("image_id,rad_id,class_name,x_min,y_min,x_max,y_max,class_id\n"
         "v001,R8,Nodule/Mass,0,0,512,512,8\n"
         "v001,R9,Nodule/Mass,256,0,768,512,8\n"
         "v001,R10,No finding,,,,,14\n"
         "v002,R8,No finding,,,,,14\n"
         "v002,R9,No finding,,,,,14\n"
         "v002,R10,No finding,,,,,14\n")


def test_vindr_raters_union_or_agreement_and_sizes(tmp_path):
    p = tmp_path / "annotations_train.csv"
    p.write_text(VINDR)
    rs = read_vindr(p)
    assert rs.negatives() == ["v002"] and [r.rater for r in rs.images["v001"].regions] == ["R8", "R9"]
    with pytest.raises(RegionError, match=r"row 2: image 'v001' has no size; expected \(width, height\)"):
        cov(rs.images["v001"])
    rs = rs.with_sizes({"v001": (1024, 1024), "v002": (1024, 1024)})
    union = np.zeros((G, G))
    union[:2, :3] = 1.0  # x 0..768 (3 patch columns), y 0..512 (2 rows)
    np.testing.assert_allclose(cov(rs.images["v001"]), union)
    both = np.zeros((G, G))
    both[:2, 1] = 1.0  # x 256..512: both radiologists
    np.testing.assert_allclose(cov(rs.images["v001"], min_raters=2), both)
    assert not cov(rs.images["v001"], min_raters=3).any()


@pytest.mark.parametrize("row, expect", [
    ("v1,R1,No finding,1,2,3,4,14", r"row 2: 'No finding' with coordinates \(1, 2, 3, 4\); expected empty"),
    ("v1,R1,Nodule/Mass,,,,,8", r"row 2, column 'x_min': expected a number of pixels, got ''"),
    ("v1,R1,Nodule/Mass,500,10,400,20,8", r"row 2: box \(x=500, y=10, w=-100, h=10\) has a negative size"),
])
def test_vindr_bad_rows(tmp_path, row, expect):
    p = tmp_path / "annotations_train.csv"
    p.write_text(VINDR.splitlines()[0] + "\n" + row + "\n")
    with pytest.raises(RegionError, match=expect) as e:
        read_vindr(p)
    assert one_line(e).startswith(str(p))


def test_vindr_box_outside_once_the_size_is_known(tmp_path):
    p = tmp_path / "annotations_train.csv"
    p.write_text(VINDR.splitlines()[0] + "\nv1,R1,Aortic enlargement,100,100,3000,400,0\n")
    rs = read_vindr(p)  # no size yet: cannot tell
    with pytest.raises(RegionError, match=r"row 2: box .* reaches outside the 2000x2500 image"):
        rs.with_sizes({"v1": (2000, 2500)})
    with pytest.raises(RegionError, match=r"row 2: box .* reaches outside the 2000x2500 image"):
        read_vindr(p, sizes={"v1": (2000, 2500)})


def test_vindr_missing_column(tmp_path):
    p = tmp_path / "annotations_train.csv"
    p.write_text("image_id,rad_id,class_name,x_min,y_min,y_max\nv1,R1,No finding,,,\n")
    with pytest.raises(RegionError, match=r"missing column 'x_max'") as e:
        read_vindr(p)
    assert one_line(e).startswith(str(p))


# --- phantoms and the grid -----------------------------------------------------------------------------

def test_phantom_masks_map_to_the_patch_mean():
    rs = phantom_regions(0, range(12), size=96)
    from maskkit.data.phantoms import PhantomGenerator

    gen = PhantomGenerator(0, 96)
    normals = [i for i in range(12) if not gen[i].masks]
    assert normals and rs.negatives() == [str(i) for i in normals]
    for i in range(12):
        p = gen[i]
        got = patch_coverage(rs.images[str(i)], 96, 16)
        want = p.lesion_mask.reshape(6, 16, 6, 16).mean((1, 3)).reshape(-1)
        np.testing.assert_allclose(got, want, atol=1e-6)
        for name, m in p.masks.items():
            np.testing.assert_allclose(patch_coverage(rs.images[str(i)], 96, 16, name),
                                       m.reshape(6, 16, 6, 16).mean((1, 3)).reshape(-1), atol=1e-6)
    assert from_phantoms([gen[0]]).images["0"].size == (96, 96)


def test_mask_coverage_is_exact_when_the_grid_does_not_divide():
    m = torch.zeros(1, 10, 10, dtype=torch.bool)
    m[0, 2, 2] = True  # pixel [2, 3) x [2, 3); bands of 2.5 pixels: half of it in band 0, half in band 1
    c = mask_coverage(m, 4).reshape(4, 4)
    want = torch.zeros(4, 4)
    want[:2, :2] = 0.25 / 6.25
    torch.testing.assert_close(c, want)
    full = mask_coverage(torch.ones(2, 10, 10, dtype=torch.bool), 4)
    torch.testing.assert_close(full, torch.ones(2, 16))


def test_boxes_exact_path_equals_their_pixels_for_integer_boxes():
    rng = np.random.default_rng(3)
    for _ in range(20):
        boxes = []
        for _ in range(3):
            x, y = rng.integers(0, 90, 2)
            boxes.append((float(x), float(y), float(rng.integers(1, 100 - x)), float(rng.integers(1, 100 - y))))
        im = ImageRegions("i", (100, 100), [Region("f", box=b) for b in boxes])
        px = np.zeros((100, 100), dtype=bool)
        for b in boxes:
            px |= Region("f", box=b).pixels((100, 100))
        np.testing.assert_allclose(patch_coverage(im, 20, 4), mask_coverage(torch.from_numpy(px)[None], 5)[0].numpy(),
                                   atol=1e-6)


def test_grid_and_threshold_errors():
    im = ImageRegions("i", (100, 100), [Region("f", box=(0, 0, 10, 10))])
    with pytest.raises(RegionError, match="image size 70 is not a positive multiple of the patch size 16"):
        patch_coverage(im, 70, 16)
    with pytest.raises(RegionError, match=r"lesion threshold 0.0; expected a fraction in \(0, 1\]"):
        lesion_patches(torch.zeros(1, 4), 0.0)
    with pytest.raises(RegionError, match="min_raters: 0"):
        patch_coverage(im, 64, 16, min_raters=0)


def test_coverage_batch_unknown_id(tmp_path):
    p = tmp_path / "stage_2_train_labels.csv"
    p.write_text(RSNA)
    with pytest.raises(RegionError, match=r"no annotation of image 'nope'; expected one of the 2 annotated ids"):
        coverage_batch(read_rsna(p), ["nope"], 64, 16)


def test_csv_quirks_bom_crlf_and_gz(tmp_path):
    """The shared CSV reader: a byte-order mark, CRLF line ends and a .gz file read like the plain file."""
    p = tmp_path / "train-rle.csv.gz"
    with gzip.open(p, "wt", newline="") as fh:
        fh.write("\ufeff" + SIIM.replace("\n", "\r\n"))
    q = tmp_path / "plain.csv"
    q.write_text(SIIM)
    a, b = read_siim(p), read_siim(q)
    assert list(a.images) == list(b.images)
    ida = list(a.images)[1]
    np.testing.assert_array_equal(a.images[ida].regions[0].runs, b.images[ida].regions[0].runs)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(RegionError, match=r"train-rle.csv: no such file; expected the annotation CSV") as e:
        read_siim(tmp_path / "train-rle.csv")
    one_line(e)


# --- every reader x every bad file (issue 19, Done when: one line naming the file, row and value) ---

HEADERS = {
    "rsna": "patientId,x,y,width,height,Target",
    "nih": "Image Index,Finding Label,Bbox [x,y,w,h],,,",
    "siim": "ImageId, EncodedPixels",
    "ms_cxr": "dicom_id,category,label_text,path,x,y,w,h,image_width,image_height",
    "vindr": "image_id,rad_id,class_name,x_min,y_min,x_max,y_max,class_id",
}
READERS = {"rsna": read_rsna, "nih": read_nih_bbox, "siim": read_siim, "ms_cxr": read_ms_cxr,
           "vindr": lambda p: read_vindr(p, sizes={"v": (1024, 1024)})}
BOX_FAULTS = {  # fault -> (the row of each box format, what the one line must say)
    "outside": ({"rsna": "a,900,900,200,200,1", "nih": "a.png,Nodule,900,900,200,200,,,",
                 "ms_cxr": "d,Pneumonia,opacity,p,900,900,200,200,1024,1024", "vindr": "v,R1,Nodule/Mass,900,900,1100,1100,8"},
                r"row 2: box \(x=900, y=900, w=200, h=200\) reaches outside the 1024x1024 image; expected 0 <= x"),
    "negative": ({"rsna": "a,10,10,-5,20,1", "nih": "a.png,Nodule,10,10,-5,20,,,",
                  "ms_cxr": "d,Pneumonia,opacity,p,10,10,-5,20,1024,1024", "vindr": "v,R1,Nodule/Mass,10,10,5,30,8"},
                 r"row 2: box \(x=10, y=10, w=-5, h=20\) has a negative size; expected a positive width and height"),
    "zero": ({"rsna": "a,10,10,0,20,1", "nih": "a.png,Nodule,10,10,0,20,,,",
              "ms_cxr": "d,Pneumonia,opacity,p,10,10,0,20,1024,1024", "vindr": "v,R1,Nodule/Mass,10,10,10,30,8"},
             r"row 2: box \(x=10, y=10, w=0, h=20\) has a zero size"),
    "not a number": ({"rsna": "a,1O,10,5,20,1", "nih": "a.png,Nodule,1O,10,5,20,,,",
                      "ms_cxr": "d,Pneumonia,opacity,p,1O,10,5,20,1024,1024", "vindr": "v,R1,Nodule/Mass,1O,10,15,30,8"},
                     r"row 2, column '(x|Bbox \[x|x_min)': expected a number of pixels, got '1O'"),
    "empty id": ({"rsna": ",10,10,5,20,1", "nih": ",Nodule,10,10,5,20,,,", "siim": ", -1",
                  "ms_cxr": ",Pneumonia,opacity,p,10,10,5,20,1024,1024", "vindr": ",R1,Nodule/Mass,10,10,15,30,8"},
                 r"row 2, column '(patientId|Image Index|ImageId|dicom_id|image_id)': empty image id; expected an image id"),
    "short row": ({"rsna": "a,10,10", "nih": "a.png,Nodule,10", "siim": "a",
                   "ms_cxr": "d,Pneumonia,opacity,p,10,10", "vindr": "v,R1,Nodule/Mass,10"},
                  r"row 2: the row ends before column '[^']+' \(\d cells\); expected a cell for each of"),
    "empty RLE": ({"siim": "a, "}, r"row 2, column 'EncodedPixels': empty; expected -1"),
    "RLE past the image": ({"siim": "a, 1048570 10"},
                           r"row 2, column 'EncodedPixels': the runs end at pixel 1048580, past the 1024x1024 = 1048576"),
    "RLE not a number": ({"siim": "a, 5 1O"}, r"row 2, column 'EncodedPixels': '1O' is not an integer"),
}


@pytest.mark.parametrize("fmt, fault", [(f, k) for k, (rows, _) in BOX_FAULTS.items() for f in rows])
def test_every_reader_names_the_file_row_and_value_of_a_bad_row(tmp_path, fmt, fault):
    rows, expect = BOX_FAULTS[fault]
    p = tmp_path / f"{fmt}.csv"
    p.write_text(HEADERS[fmt] + "\n" + rows[fmt] + "\n")
    with pytest.raises(RegionError, match=expect) as e:
        READERS[fmt](p)
    assert one_line(e).startswith(f"{p}: row 2")


@pytest.mark.parametrize("fmt", list(HEADERS))
@pytest.mark.parametrize("fault, text, expect", [
    ("empty file", "", r": the file is empty; expected a CSV header row naming its columns \("),
    ("only a header", "{header}\n", r": a header and no rows; expected one row per annotation after the header \("),
    ("only a header and blank lines", "{header}\n\n\n", r": a header and no rows"),
    ("a missing column", "{cut}\n", r": missing column '[^']+'; it has "),
])
def test_every_reader_refuses_an_empty_file_a_bare_header_and_a_missing_column(tmp_path, fmt, fault, text, expect):
    header = HEADERS[fmt]
    cut = ",".join(c for c in header.split(",") if c.strip() not in ("x", "Bbox [x", "EncodedPixels", "x_min"))
    p = tmp_path / f"{fmt}.csv"
    p.write_text(text.format(header=header, cut=cut))
    with pytest.raises(RegionError, match=expect) as e:
        READERS[fmt](p)
    assert one_line(e).startswith(f"{p}: ")


@pytest.mark.parametrize("reader, text, match", [
    (R.read_nih_bbox, "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Cardiomegally,10,10,20,20,,,\n",
     "n.csv: row 2, column 'Finding Label': 'Cardiomegally' is not a finding of this format (expected one of Atelectasis, "
     "Cardiomegaly, Effusion, Infiltrate, Mass, Nodule, Pneumonia, Pneumothorax); did you mean 'Cardiomegaly'?"),
    (R.read_nih_bbox, "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,1,1,2,2,,,\n00000001_000.png,Foo,1,1,2,2,,,\n",
     "n.csv: row 3, column 'Finding Label': 'Foo' is not a finding of this format (expected one of Atelectasis, "),
    (R.read_ms_cxr, "dicom_id,category,label_text,path,x,y,w,h,image_width,image_height\nd1,Pnuemonia,patchy opacity,p,1,1,5,5,32,32\n",
     "n.csv: row 2, column 'category': 'Pnuemonia' is not a finding of this format (expected one of Atelectasis, "
     "Cardiomegaly, Consolidation, Edema, Lung Opacity, Pleural Effusion, Pneumonia, Pneumothorax); did you mean 'Pneumonia'?"),
    (R.read_vindr, "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\nv1,R1,Pleural efusion,1,1,5,5\n",
     "n.csv: row 2, column 'class_name': 'Pleural efusion' is not a finding of this format (expected one of Aortic "
     "enlargement, "),
])
def test_a_misspelt_finding_is_one_line_with_close_matches(tmp_path, reader, text, match):
    """A misspelt finding (`Cardiomegally`) was scored with a prompt of the misspelling."""
    p = tmp_path / "n.csv"
    p.write_text(text)
    with pytest.raises(R.RegionError) as e:
        reader(p)
    assert str(e.value).endswith(match) or match in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_known_findings_in_another_case_are_the_formats_name(tmp_path):
    p = tmp_path / "n.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,cardiomegaly,10,10,20,20,,,\n"
                 "00000001_000.png,Infiltrate,1,1,2,2,,,\n")
    assert R.read_nih_bbox(p).findings() == ["Cardiomegaly", "Infiltration"]
    v = tmp_path / "v.csv"  # VinDr: a label of a release this list lacks (no close match) is kept as written
    v.write_text("image_id,rad_id,class_name,x_min,y_min,x_max,y_max\nv1,R1,Tuberculosis nodule scar,1,1,5,5\n")
    assert R.read_vindr(v).findings() == ["Tuberculosis nodule scar"]
